package version

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestAgentImageIsPrintedWhenStamped(t *testing.T) {
	old := AgentImage
	t.Cleanup(func() { AgentImage = old })

	AgentImage = ""
	dev := Get()
	if strings.Contains(dev.String(), "agent image") {
		t.Errorf("a dev build names no agent image: %s", dev)
	}
	if b, _ := json.Marshal(dev); strings.Contains(string(b), "agentImage") {
		t.Errorf("a dev build's JSON has no agentImage: %s", b)
	}

	AgentImage = "ghcr.io/apiproxy/agent:v1.2.3@sha256:1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
	rel := Get()
	if !strings.HasSuffix(rel.String(), ", agent image "+AgentImage+")") {
		t.Errorf("one-line form: %s", rel)
	}
	var back map[string]string
	if b, _ := json.Marshal(rel); json.Unmarshal(b, &back) != nil || back["agentImage"] != AgentImage {
		t.Errorf("JSON: %s", b)
	}
}
