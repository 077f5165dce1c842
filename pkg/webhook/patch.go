// Package webhook is the mutating admission webhook of `agent webhook`: it points every container of
// a new pod at the API server's FQDN (KUBERNETES_SERVICE_HOST, Gardener-style), optionally with the
// KUBERNETES_PORT* family and a hostAliases entry (Liqo-style), as a minimal RFC 6902 patch built
// directly from the few pod fields it needs, never by diffing whole objects.
package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	// ConfigMaps reads the ConfigMaps that containers name in envFrom; nil leaves every container
	// with a configMapRef alone (with a warning), since the map could set the variables.
	ConfigMaps ConfigMapReader
}

// ConfigMapReader returns a ConfigMap's data (a NotFound API error when it does not exist).
type ConfigMapReader interface {
	ConfigMapData(ctx context.Context, namespace, name string) (map[string]string, error)
}

// mutator holds the pre-encoded JSON fragments of a Config so building a patch is only appending bytes.
type mutator struct {
	reader ConfigMapReader
	vars   []envVar // in injection order; vars[0] is KUBERNETES_SERVICE_HOST
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
	m := &mutator{vars: []envVar{{EnvHost, c.FQDN}}, reader: c.ConfigMaps}
	if c.Port != 0 {
		// The same family the kubelet derives from the `kubernetes` Service, so clients that read
		// any of them (not only client-go) see the same endpoint.
		p := strconv.Itoa(c.Port)
		url := "tcp://" + net.JoinHostPort(c.FQDN, p)
		pfx := "KUBERNETES_PORT_" + p + "_TCP"
		m.vars = append(m.vars,
			envVar{"KUBERNETES_SERVICE_PORT", p},
			envVar{"KUBERNETES_SERVICE_PORT_HTTPS", p},
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
		InitContainers      []slimContainer `json:"initContainers"`
		Containers          []slimContainer `json:"containers"`
		EphemeralContainers []slimContainer `json:"ephemeralContainers"`
		HostAliases         []slimHostAlias `json:"hostAliases"`
	} `json:"spec"`
}

type slimContainer struct {
	Name string `json:"name"`
	// Env is nil when the container has no env (absent or null): the patch then adds the array.
	Env     []slimEnv     `json:"env"`
	EnvFrom []slimEnvFrom `json:"envFrom"`

	// Set from EnvFrom before patching (see resolveEnvFrom): the injected names its ConfigMaps
	// set, and whether the container must be left alone.
	fromEnvFrom map[string]bool
	leaveAlone  bool
}

type slimEnvFrom struct {
	Prefix       string   `json:"prefix"`
	ConfigMapRef *slimRef `json:"configMapRef"`
	SecretRef    *slimRef `json:"secretRef"`
}

type slimRef struct {
	Name     string `json:"name"`
	Optional *bool  `json:"optional"`
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

// patch returns the JSON patch for a new pod, or nil when nothing is missing.
func (m *mutator) patch(p *slimPod) []byte {
	if p.Spec == nil {
		return nil
	}
	var b []byte
	b = m.containers(b, "initContainers", p.Spec.InitContainers, nil)
	b = m.containers(b, "containers", p.Spec.Containers, nil)
	b = m.hostAliases(b, p.Spec.HostAliases)
	if b == nil {
		return nil
	}
	return append(b, ']')
}

// patchEphemeral returns the JSON patch for the ephemeral containers a pods/ephemeralcontainers
// update adds (those not in existing, by name), or nil. Nothing else of a running pod may change.
func (m *mutator) patchEphemeral(p *slimPod, existing map[string]bool) []byte {
	if p.Spec == nil {
		return nil
	}
	b := m.containers(nil, "ephemeralContainers", p.Spec.EphemeralContainers, existing)
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

// containers adds what is missing to the containers of field, except those named in skip.
func (m *mutator) containers(b []byte, field string, cs []slimContainer, skip map[string]bool) []byte {
	for i := range cs {
		c := &cs[i]
		env := c.Env
		if c.leaveAlone || skip[c.Name] || hasEnv(env, EnvHost) || c.fromEnvFrom[EnvHost] {
			// The container chose its own API server (or may have, through envFrom): adding our
			// port family to its host would point it at a mix of both, so it is left entirely alone.
			continue
		}
		if env == nil {
			b = op(b)
			b = append(b, `{"op":"add","path":"/spec/`...)
			b = append(b, field...)
			b = append(b, '/')
			b = strconv.AppendInt(b, int64(i), 10)
			b = append(b, `/env","value":[`...)
			first := true
			for j, v := range m.envJSON {
				if c.fromEnvFrom[m.vars[j].Name] {
					continue
				}
				if !first {
					b = append(b, ',')
				}
				first = false
				b = append(b, v...)
			}
			b = append(b, "]}"...)
			continue
		}
		for j, v := range m.vars {
			if j > 0 && (hasEnv(env, v.Name) || c.fromEnvFrom[v.Name]) {
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

// injects reports whether name is one of the injected variables.
func (m *mutator) injects(name string) bool {
	for _, v := range m.vars {
		if v.Name == name {
			return true
		}
	}
	return false
}

// mayProduce reports whether an envFrom source with this prefix could set an injected variable
// (a key is never empty, so the name must be longer than the prefix).
func (m *mutator) mayProduce(prefix string) bool {
	for _, v := range m.vars {
		if len(v.Name) > len(prefix) && strings.HasPrefix(v.Name, prefix) {
			return true
		}
	}
	return false
}

// envFromResolver resolves the envFrom sources of one review's containers, reading each ConfigMap
// at most once.
type envFromResolver struct {
	m         *mutator
	reader    ConfigMapReader
	namespace string
	maps      map[string]cmResult
	warnings  []string
}

type cmResult struct {
	data map[string]string
	err  error
}

// resolve decides, for each container with envFrom, which injected names its ConfigMaps set, and
// leaves it alone when a source could set them but cannot be known: a Secret (never read), a
// ConfigMap that cannot be read, or a source kind this webhook does not know.
func (r *envFromResolver) resolve(ctx context.Context, field string, cs []slimContainer) {
	for i := range cs {
		c := &cs[i]
		for _, ef := range c.EnvFrom {
			var why string
			switch {
			case ef.ConfigMapRef != nil:
				res := r.configMap(ctx, ef.ConfigMapRef.Name)
				if res.err != nil && apierrors.IsNotFound(res.err) && ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue // an optional map that does not exist sets nothing
				}
				if res.err != nil {
					why = fmt.Sprintf("envFrom ConfigMap %q could not be read (%v)", ef.ConfigMapRef.Name, res.err)
					break
				}
				for k := range res.data {
					if name := ef.Prefix + k; r.m.injects(name) {
						if c.fromEnvFrom == nil {
							c.fromEnvFrom = map[string]bool{}
						}
						c.fromEnvFrom[name] = true
					}
				}
				continue
			case ef.SecretRef != nil:
				if !r.m.mayProduce(ef.Prefix) {
					continue
				}
				why = fmt.Sprintf("envFrom Secret %q may set %s (Secrets are not read)", ef.SecretRef.Name, EnvHost)
			default:
				why = "an envFrom source of an unknown kind may set " + EnvHost
			}
			c.leaveAlone = true
			r.warnings = append(r.warnings, fmt.Sprintf("apiproxy: %s %q left unchanged: %s", strings.TrimSuffix(field, "s"), c.Name, why))
			break
		}
	}
}

func (r *envFromResolver) configMap(ctx context.Context, name string) cmResult {
	if res, ok := r.maps[name]; ok {
		return res
	}
	var res cmResult
	if r.reader == nil {
		res.err = fmt.Errorf("the webhook has no API access to read ConfigMaps")
	} else {
		res.data, res.err = r.reader.ConfigMapData(ctx, r.namespace, name)
	}
	if r.maps == nil {
		r.maps = map[string]cmResult{}
	}
	r.maps[name] = res
	return res
}

func hasEnvFrom(cs []slimContainer) bool {
	for i := range cs {
		if len(cs[i].EnvFrom) > 0 {
			return true
		}
	}
	return false
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
