// Package webhook is the mutating admission webhook of `agent webhook`: it points every container of
// a new pod at the API server's FQDN (KUBERNETES_SERVICE_HOST, Gardener-style), optionally with the
// KUBERNETES_PORT* family and a hostAliases entry (Liqo-style), as a minimal RFC 6902 patch built
// directly from the few pod fields it needs, never by diffing whole objects.
package webhook

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
)

const (
	// EnvHost is the variable client-go's in-cluster config reads for the API server host.
	EnvHost = "KUBERNETES_SERVICE_HOST"
	// OptOutAnnotation is Liqo's per-pod switch: "disabled" or "remote" means the pod does not want
	// the home API server injected.
	OptOutAnnotation = "liqo.io/api-server-support"
	// OptOutLabel set to "disabled" on a pod (or its namespace, through the webhook's selectors)
	// keeps the webhook away from it.
	OptOutLabel = "apiproxy.io/inject"
)

// Config is what gets injected.
type Config struct {
	// FQDN is the API server's name (or IP) written to KUBERNETES_SERVICE_HOST.
	FQDN string
	// Port, when not 0, adds KUBERNETES_SERVICE_PORT and the KUBERNETES_PORT* family.
	Port int
	// HostAliasIP, when set, maps the FQDN (without its trailing dot) to this IP in /etc/hosts.
	HostAliasIP net.IP
}

// mutator holds the pre-encoded JSON fragments of a Config so building a patch is only appending bytes.
type mutator struct {
	vars []envVar // in injection order; vars[0] is KUBERNETES_SERVICE_HOST
	// envJSON[i] is vars[i] encoded as a JSON object.
	envJSON [][]byte

	aliasIP        net.IP
	aliasIPJSON    []byte
	aliasNames     []string
	aliasNamesJSON [][]byte
}

type envVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

func newMutator(c Config) (*mutator, error) {
	if c.FQDN == "" {
		return nil, fmt.Errorf("the API server FQDN is empty")
	}
	if c.Port < 0 || c.Port > 65535 {
		return nil, fmt.Errorf("API server port %d is out of range 1-65535", c.Port)
	}
	m := &mutator{vars: []envVar{{EnvHost, c.FQDN}}}
	if c.Port != 0 {
		// The same family the kubelet derives from the `kubernetes` Service, so clients that read
		// any of them (not only client-go) see the same endpoint.
		p := strconv.Itoa(c.Port)
		url := "tcp://" + net.JoinHostPort(c.FQDN, p)
		pfx := "KUBERNETES_PORT_" + p + "_TCP"
		m.vars = append(m.vars,
			envVar{"KUBERNETES_SERVICE_PORT", p},
			envVar{"KUBERNETES_PORT", url},
			envVar{pfx, url},
			envVar{pfx + "_PROTO", "tcp"},
			envVar{pfx + "_ADDR", c.FQDN},
			envVar{pfx + "_PORT", p},
		)
	}
	for _, v := range m.vars {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		m.envJSON = append(m.envJSON, b)
	}
	if c.HostAliasIP != nil {
		m.aliasIP = c.HostAliasIP
		m.aliasIPJSON, _ = json.Marshal(c.HostAliasIP.String())
		m.aliasNames = aliasNames(c.FQDN)
		for _, n := range m.aliasNames {
			b, _ := json.Marshal(n)
			m.aliasNamesJSON = append(m.aliasNamesJSON, b)
		}
	}
	return m, nil
}

// aliasNames are the /etc/hosts names for fqdn. hostAliases reject a trailing dot, and a pod that
// reaches the API server as kubernetes.default[.svc] uses the short names too, so both are mapped.
func aliasNames(fqdn string) []string {
	name := strings.TrimSuffix(fqdn, ".")
	if name == "kubernetes.default" || name == "kubernetes.default.svc" || strings.HasPrefix(name, "kubernetes.default.svc.") {
		names := []string{"kubernetes.default", "kubernetes.default.svc"}
		if name != "kubernetes.default" && name != "kubernetes.default.svc" {
			names = append(names, name)
		}
		return names
	}
	return []string{name}
}

// slimPod is the part of a Pod the webhook reads; decoding only this is much cheaper than a corev1.Pod.
type slimPod struct {
	Metadata struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	// Spec is nil when the object has none (not a real pod): there is then nothing to patch into.
	Spec *struct {
		InitContainers []slimContainer `json:"initContainers"`
		Containers     []slimContainer `json:"containers"`
		HostAliases    []slimHostAlias `json:"hostAliases"`
	} `json:"spec"`
}

type slimContainer struct {
	// Env is nil when the container has no env (absent or null): the patch then adds the array.
	Env []slimEnv `json:"env"`
}

type slimEnv struct {
	Name string `json:"name"`
}

type slimHostAlias struct {
	IP        string   `json:"ip"`
	Hostnames []string `json:"hostnames"`
}

// optedOut reports whether the pod asked not to be mutated, and why.
func (p *slimPod) optedOut() (bool, string) {
	switch p.Metadata.Annotations[OptOutAnnotation] {
	case "disabled", "remote":
		return true, OptOutAnnotation
	}
	if p.Metadata.Labels[OptOutLabel] == "disabled" {
		return true, OptOutLabel
	}
	return false, ""
}

// patch returns the JSON patch for pod, or nil when nothing is missing.
func (m *mutator) patch(p *slimPod) []byte {
	if p.Spec == nil {
		return nil
	}
	var b []byte
	b = m.containers(b, "initContainers", p.Spec.InitContainers)
	b = m.containers(b, "containers", p.Spec.Containers)
	b = m.hostAliases(b, p.Spec.HostAliases)
	if b == nil {
		return nil
	}
	return append(b, ']')
}

// op starts one operation, opening the array on the first.
func op(b []byte) []byte {
	if b == nil {
		b = make([]byte, 0, 512)
		return append(b, '[')
	}
	return append(b, ',')
}

func (m *mutator) containers(b []byte, field string, cs []slimContainer) []byte {
	for i := range cs {
		env := cs[i].Env
		if hasEnv(env, EnvHost) {
			// The container chose its own API server: adding our port family to its host would
			// point it at a mix of both, so it is left entirely alone.
			continue
		}
		if env == nil {
			b = op(b)
			b = append(b, `{"op":"add","path":"/spec/`...)
			b = append(b, field...)
			b = append(b, '/')
			b = strconv.AppendInt(b, int64(i), 10)
			b = append(b, `/env","value":[`...)
			for j, v := range m.envJSON {
				if j > 0 {
					b = append(b, ',')
				}
				b = append(b, v...)
			}
			b = append(b, "]}"...)
			continue
		}
		for j, v := range m.vars {
			if j > 0 && hasEnv(env, v.Name) {
				continue // never override a value the pod sets itself
			}
			b = op(b)
			b = append(b, `{"op":"add","path":"/spec/`...)
			b = append(b, field...)
			b = append(b, '/')
			b = strconv.AppendInt(b, int64(i), 10)
			b = append(b, `/env/-","value":`...)
			b = append(b, m.envJSON[j]...)
			b = append(b, '}')
		}
	}
	return b
}

func hasEnv(env []slimEnv, name string) bool {
	for i := range env {
		if env[i].Name == name {
			return true
		}
	}
	return false
}

// hostAliases maps the names that no entry maps yet to the configured IP: appended to an existing
// entry for that IP, or in a new entry. A name the pod already maps (to any IP) is left alone.
func (m *mutator) hostAliases(b []byte, existing []slimHostAlias) []byte {
	if m.aliasIP == nil {
		return b
	}
	var missing []int // indexes into m.aliasNames
	for i, n := range m.aliasNames {
		if !aliased(existing, n) {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return b
	}
	for i := range existing {
		ip := net.ParseIP(existing[i].IP)
		if ip == nil || !ip.Equal(m.aliasIP) {
			continue
		}
		idx := strconv.Itoa(i)
		if existing[i].Hostnames == nil {
			b = op(b)
			b = append(b, `{"op":"add","path":"/spec/hostAliases/`+idx+`/hostnames","value":`...)
			b = m.names(b, missing)
			return append(b, '}')
		}
		for _, n := range missing {
			b = op(b)
			b = append(b, `{"op":"add","path":"/spec/hostAliases/`+idx+`/hostnames/-","value":`...)
			b = append(b, m.aliasNamesJSON[n]...)
			b = append(b, '}')
		}
		return b
	}
	b = op(b)
	if existing == nil {
		b = append(b, `{"op":"add","path":"/spec/hostAliases","value":[`...)
	} else {
		b = append(b, `{"op":"add","path":"/spec/hostAliases/-","value":`...)
	}
	b = append(b, `{"ip":`...)
	b = append(b, m.aliasIPJSON...)
	b = append(b, `,"hostnames":`...)
	b = m.names(b, missing)
	b = append(b, '}')
	if existing == nil {
		b = append(b, ']')
	}
	return append(b, '}')
}

func (m *mutator) names(b []byte, idx []int) []byte {
	b = append(b, '[')
	for k, n := range idx {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, m.aliasNamesJSON[n]...)
	}
	return append(b, ']')
}

func aliased(aliases []slimHostAlias, name string) bool {
	for i := range aliases {
		for _, h := range aliases[i].Hostnames {
			if h == name {
				return true
			}
		}
	}
	return false
}
