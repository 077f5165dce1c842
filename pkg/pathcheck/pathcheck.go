// Package pathcheck walks the path from this machine to a provider cluster's API server through its
// CONNECT proxy, hop by hop, for `kubectl apiproxy check`: Liqo's CRDs and cluster IDs, the IP
// object, the consumer's Configuration, the computed address (all through liqo.Resolve, the same
// computation get-ip and connect use), then TCP, CONNECT, TLS, /readyz and the user's access, with
// the failures of package hops (the same words connect uses).
package pathcheck

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/pkg/connect"
	"github.com/apiproxy/apiproxy/pkg/hops"
	"github.com/apiproxy/apiproxy/pkg/liqo"
	"github.com/apiproxy/apiproxy/pkg/remap"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Status of a hop.
type Status string

// The statuses: SKIP is a hop not tried because an earlier one failed (or one not needed).
const (
	OK   Status = "OK"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// Hop is one line of the report.
type Hop struct {
	Hop    string `json:"hop"`
	Status Status `json:"status"`
	// Object is the object or address the hop is about.
	Object string `json:"object,omitempty"`
	Detail string `json:"detail,omitempty"`
	Fix    string `json:"fix,omitempty"`
}

// Report is the whole walk; OK when every hop passed (or was skipped as not needed).
type Report struct {
	OK       bool         `json:"ok"`
	ProxyURL string       `json:"proxyURL,omitempty"`
	Hops     []Hop        `json:"hops"`
	Address  *liqo.Result `json:"address,omitempty"`
}

// Input says what to check.
type Input struct {
	// Request computes the proxy address (get-ip's computation); ignored when ProxyURL is set.
	Request liqo.Request
	// Resolve runs the computation (the command's, so results read the same as get-ip's).
	Resolve func(context.Context, liqo.Request) (*liqo.Result, error)
	// ProxyURL skips the Liqo hops.
	ProxyURL string
	// Target is the provider context; TLSServerName overrides the name its certificate must carry.
	Target        *connect.Target
	TLSServerName string
	// REST is the user's client configuration for the provider (identity, impersonation); its
	// requests are sent through the tunnel.
	REST        *rest.Config
	DialTimeout time.Duration
	// Relay, when set, replaces the TCP and CONNECT hops: the tunnel goes through the --via
	// cluster's proxy pod (connect --via).
	Relay     *connect.Relay
	RelayName string
	// RelayCreds answer the relay when it asks for a token (connect's --via-proxy-token, else the
	// --via context's user's token).
	RelayCreds *connect.ProxyCredentials
	// Creds answer a proxy that authenticates tunnels (407), as connect does: --proxy-token, else
	// the context's user's token. Nil sends none.
	Creds *connect.ProxyCredentials
}

// Hop names of the address computation.
const (
	HopLiqo          = string(liqo.StageLiqo)
	HopIP            = string(liqo.StageIP)
	HopConfiguration = string(liqo.StageConfiguration)
	HopCondition     = string(liqo.StageCondition)
	HopAddress       = string(liqo.StageAddress)
	HopRelay         = "relay"
)

// Run walks the path; it stops trying at the first failure and marks the rest SKIP.
func Run(ctx context.Context, in Input) *Report {
	r := &Report{}
	failed := false
	add := func(h Hop) {
		if failed {
			h.Status, h.Detail, h.Fix = Skip, "not tried: an earlier hop failed", ""
		}
		if h.Status == Fail {
			failed = true
		}
		r.Hops = append(r.Hops, h)
	}
	proxyURL := in.ProxyURL
	if proxyURL == "" {
		proxyURL = addressHops(ctx, in, r, add)
	} else {
		for _, h := range []string{HopLiqo, HopIP, HopConfiguration, HopCondition} {
			add(Hop{Hop: h, Status: Skip, Detail: "--proxy-url given"})
		}
		add(Hop{Hop: HopAddress, Status: OK, Object: proxyURL, Detail: "given with --proxy-url"})
	}
	r.ProxyURL = proxyURL
	if failed {
		for _, h := range []string{hops.TCP, hops.Connect, hops.TLS, hops.Readyz, hops.Access} {
			add(Hop{Hop: h})
		}
		return finish(r)
	}
	proxy, _ := tunnel.ProxyHostPort(proxyURL)
	authority, err := in.Target.Authority()
	if err != nil {
		add(Hop{Hop: hops.TCP, Status: Fail, Detail: err.Error(), Fix: "fix the context's server URL"})
		for _, h := range []string{hops.Connect, hops.TLS, hops.Readyz, hops.Access} {
			add(Hop{Hop: h})
		}
		return finish(r)
	}
	var conn net.Conn
	tokenRequired := false
	if in.Relay != nil {
		conn = relayHop(ctx, in, proxy, authority, add)
	} else {
		conn, tokenRequired = directHops(ctx, in, proxy, authority, add)
	}
	dial := in.tunnelDialer(proxy, authority, tokenRequired)
	if conn == nil {
		for _, h := range []string{hops.TLS, hops.Readyz, hops.Access} {
			add(Hop{Hop: h})
		}
		return finish(r)
	}
	tlsHop(ctx, in, conn, proxyURL, add)
	apiHops(ctx, in, dial, add)
	return finish(r)
}

func finish(r *Report) *Report {
	r.OK = true
	for _, h := range r.Hops {
		if h.Status == Fail || h.Status == Skip && strings.HasPrefix(h.Detail, "not tried") {
			r.OK = false
		}
	}
	return r
}

// addressHops runs the Liqo part: preflight, then Resolve, one hop per stage.
func addressHops(ctx context.Context, in Input, r *Report, add func(Hop)) string {
	pre, err := liqo.CheckLiqo(ctx, in.Request)
	providerName := in.Request.Provider.Name
	liqoObj := "ips.ipam.liqo.io in " + providerName
	if in.Request.Consumer != nil {
		liqoObj += ", configurations.networking.liqo.io in " + in.Request.Consumer.Name
	}
	if err != nil {
		add(Hop{Hop: HopLiqo, Status: Fail, Object: liqoObj, Detail: err.Error(), Fix: fixFor(err)})
		for _, h := range []string{HopIP, HopConfiguration, HopCondition, HopAddress} {
			add(Hop{Hop: h})
		}
		return ""
	}
	add(Hop{Hop: HopLiqo, Status: OK, Object: liqoObj, Detail: pre.String()})
	res, err := in.Resolve(ctx, in.Request)
	r.Address = res
	stage := liqo.StageOf(err)
	if err != nil && stage == "" {
		stage = liqo.StageIP
	}
	order := []liqo.Stage{liqo.StageIP, liqo.StageConfiguration, liqo.StageCondition, liqo.StageAddress}
	for _, st := range order {
		h := Hop{Hop: string(st)}
		switch {
		case err != nil && st == stage:
			h.Status, h.Object, h.Detail, h.Fix = Fail, objectOf(st, res, in), err.Error(), fixFor(err)
		case err != nil && stageIndex(st) > stageIndex(stage):
			// not tried
		case st == liqo.StageCondition && in.Request.RemoteCIDR != "":
			h.Status, h.Detail = Skip, "consumer not read: remapped external CIDR given"
		default:
			h.Status, h.Object, h.Detail = OK, objectOf(st, res, in), detailOf(st, res)
		}
		add(h)
	}
	if err != nil {
		return ""
	}
	return res.ProxyURL
}

func stageIndex(s liqo.Stage) int {
	return map[liqo.Stage]int{liqo.StageLiqo: 0, liqo.StageIP: 1, liqo.StageConfiguration: 2, liqo.StageCondition: 3, liqo.StageAddress: 4}[s]
}

func objectOf(st liqo.Stage, res *liqo.Result, in Input) string {
	if res == nil {
		return ""
	}
	switch st {
	case liqo.StageIP:
		if res.IP.Name == "" {
			return "IP in " + in.Request.Provider.Name
		}
		return fmt.Sprintf("IP %s in %s", res.IP, res.Provider)
	case liqo.StageConfiguration:
		if in.Request.RemoteCIDR != "" {
			return "--remote-cidr " + in.Request.RemoteCIDR
		}
		if res.Configuration != nil {
			return fmt.Sprintf("Configuration %s in %s", res.Configuration, res.Consumer)
		}
		if in.Request.Consumer != nil {
			return fmt.Sprintf("Configuration labelled %s=%s in %s", liqo.RemoteClusterIDLabel, res.ProviderClusterID, in.Request.Consumer.Name)
		}
	case liqo.StageCondition:
		if res.Configuration != nil {
			return fmt.Sprintf("condition %s of Configuration %s in %s", liqo.ConditionType, res.Configuration, res.Consumer)
		}
	case liqo.StageAddress:
		if res.ProxyURL != "" {
			return res.ProxyURL
		}
		return res.RemappedIP.String()
	}
	return ""
}

func detailOf(st liqo.Stage, res *liqo.Result) string {
	switch st {
	case liqo.StageIP:
		return fmt.Sprintf("%s (%s); spec.ip %s, remapped %s (%s)", res.Proxy, res.IPSelectedBy, res.LocalIP, res.RemappedIP, res.StatusShape)
	case liqo.StageConfiguration:
		if res.Configuration == nil {
			return "consumer not read: remapped external CIDR given"
		}
		return "remapped external CIDR " + res.RemappedExternalCIDR()
	case liqo.StageCondition:
		switch c := res.Condition; {
		case c == nil:
			return "no " + liqo.ConditionType + " condition (Liqo before v1.2.0 sets none): the CIDRs are used as they are"
		case c.Ignored:
			for _, w := range res.Warnings {
				if strings.Contains(w, liqo.ConditionType) {
					return "WARNING: " + w
				}
			}
			return "WARNING: not ready, ignored (--ignore-liqo-conditions)"
		default:
			return fmt.Sprintf("True, observed at the current generation %d", c.Generation)
		}
	case liqo.StageAddress:
		if res.Matched == "" {
			return fmt.Sprintf("%s kept unchanged (outside every CIDR)", res.FinalIP)
		}
		return fmt.Sprintf("%s remapped from %s to %s (%s)", res.RemappedIP, res.From, res.To, res.Matched)
	}
	return ""
}

// fixFor is the fix for a failure of the address computation, by kind; the message itself names
// the object.
func fixFor(err error) string {
	switch {
	case errors.Is(err, liqo.ErrNotServed):
		return "install Liqo (networking) in that cluster, or check the context"
	case errors.Is(err, liqo.ErrClusterID):
		return "check Liqo's cluster-ID ConfigMap, or pass --local-cluster-id / --remote-cluster-id"
	case errors.Is(err, liqo.ErrNotFound):
		return "run kubectl apiproxy install in the provider (it creates the IP object when Liqo is present), or check --name and --liqo-namespace"
	case errors.Is(err, liqo.ErrSeveralIPs):
		return "pick one with --name"
	case errors.Is(err, liqo.ErrStatusNotSet):
		return "Liqo has not finished: wait for its IPAM and network controllers, then retry"
	case errors.Is(err, liqo.ErrNotReady):
		return "wait for Liqo's network controllers to configure the peering's CIDRs, or pass --ignore-liqo-conditions to go on anyway"
	case errors.Is(err, liqo.ErrNoConfiguration):
		return "peer the clusters with Liqo (or check --local-cluster-id), or give --remote-cidr"
	case errors.Is(err, liqo.ErrSeveralConfigurations):
		return "delete the stale Configurations, or give --remote-cidr"
	case errors.Is(err, remap.ErrPrefixLengthMismatch), errors.Is(err, remap.ErrFamilyMismatch), errors.Is(err, remap.ErrOutside):
		return "check the CIDRs Liqo assigned to this peering (or --remote-cidr)"
	case errors.Is(err, liqo.ErrInvalidValue):
		return "the object holds a value that does not parse: check the Liqo version and the object"
	}
	return "check access to the cluster (kubeconfig, RBAC to read the Liqo objects)"
}

// tunnelDialer opens the tunnels of the API hops with connect's dialers, so a proxy that
// authenticates tunnels gets the same token connect would send (at once when the connect hop has
// already seen the 407).
func (in Input) tunnelDialer(proxy, authority string, tokenRequired bool) func(context.Context) (net.Conn, error) {
	if in.Relay != nil {
		vd := &connect.ViaDialer{Relay: in.Relay, RemoteProxy: proxy, Timeout: in.DialTimeout, Creds: in.Creds, RelayCreds: in.RelayCreds}
		return func(ctx context.Context) (net.Conn, error) { return vd.DialContext(ctx, "tcp", authority) }
	}
	d := &connect.AuthDialer{Dialer: tunnel.Dialer{Proxy: proxy, Timeout: in.DialTimeout}, Creds: in.Creds}
	d.Required.Store(tokenRequired)
	return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", authority) }
}

// directHops: TCP to the proxy, then CONNECT over that same connection (and, when the proxy asks
// for a token, once more with it, as connect does). tokenRequired reports that 407.
func directHops(ctx context.Context, in Input, proxy, authority string, add func(Hop)) (conn net.Conn, tokenRequired bool) {
	dctx, cancel := context.WithTimeout(ctx, in.DialTimeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(dctx, "tcp", proxy)
	if err != nil {
		f := hops.TCPError(err, proxy)
		add(Hop{Hop: hops.TCP, Status: Fail, Object: proxy, Detail: f.Msg + ": " + err.Error(), Fix: f.Fix})
		add(Hop{Hop: hops.Connect})
		return nil, false
	}
	add(Hop{Hop: hops.TCP, Status: OK, Object: proxy, Detail: "connected from " + raw.LocalAddr().String()})
	d := &connect.AuthDialer{Dialer: tunnel.Dialer{Proxy: proxy, Forward: &preDialed{c: raw}}, Creds: in.Creds}
	conn, err = d.DialContext(dctx, "tcp", authority)
	object := "CONNECT " + authority
	var nt *connect.NoTokenError
	switch {
	case errors.As(err, &nt):
		add(Hop{Hop: hops.Connect, Status: Fail, Object: object, Detail: nt.Error(),
			Fix: "pass a token of the proxy's cluster whose user may create tunnels.apiproxy.io: --proxy-token TOKEN"})
		return nil, true
	case err != nil:
		raw.Close()
		f := hops.DialError(err, proxy)
		detail := f.Msg
		if d.Required.Load() || in.Creds.Explicit() {
			detail += " to the CONNECT with " + in.Creds.Describe()
		}
		if f.Fix == hops.RefusedSourceFix {
			// The proxy resets sources outside its --allow-source before reading: name the
			// address it most likely saw.
			f.Fix = fmt.Sprintf("this machine connected from %s, which is probably outside the proxy's --allow-source (unless a NAT on the way gives it another source): "+
				"add it there (install --allow-source CIDR; this cluster's own pods: install --cluster-pod-cidr); the proxy logs each refused source", raw.LocalAddr())
		}
		add(Hop{Hop: hops.Connect, Status: Fail, Object: object, Detail: detail, Fix: f.Fix})
		return nil, d.Required.Load()
	}
	detail := "200: the proxy dialed the API server"
	switch {
	case d.Required.Load():
		detail = "407 without a token, then 200 with " + in.Creds.Describe() + ": the proxy dialed the API server"
	case in.Creds.Explicit():
		detail = "200 with " + in.Creds.Describe() + ": the proxy dialed the API server"
	}
	add(Hop{Hop: hops.Connect, Status: OK, Object: object, Detail: detail})
	return conn, d.Required.Load()
}

// relayHop replaces TCP and CONNECT with the --via relay (connect's ViaDialer, whose errors name
// their leg).
func relayHop(ctx context.Context, in Input, proxy, authority string, add func(Hop)) net.Conn {
	object := fmt.Sprintf("port-forward via %s to its proxy pod, CONNECT %s, CONNECT %s", in.RelayName, proxy, authority)
	conn, err := in.tunnelDialer(proxy, authority, false)(ctx)
	if err != nil {
		add(Hop{Hop: HopRelay, Status: Fail, Object: object, Detail: err.Error(), Fix: "see the leg named; the relay needs pods/portforward in the --via cluster and install --relay there"})
		add(Hop{Hop: hops.TCP, Status: Skip, Detail: "replaced by the relay"})
		add(Hop{Hop: hops.Connect, Status: Skip, Detail: "replaced by the relay"})
		return nil
	}
	add(Hop{Hop: HopRelay, Status: OK, Object: object, Detail: "tunnel open"})
	add(Hop{Hop: hops.TCP, Status: Skip, Detail: "replaced by the relay (--via)"})
	add(Hop{Hop: hops.Connect, Status: Skip, Detail: "replaced by the relay (--via)"})
	return conn
}

// preDialed hands out the connection the tcp hop opened, then dials anew (the CONNECT repeated with
// a token after a 407 goes on a fresh connection).
type preDialed struct{ c net.Conn }

func (p *preDialed) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if c := p.c; c != nil {
		p.c = nil
		return c, nil
	}
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func tlsHop(ctx context.Context, in Input, conn net.Conn, proxyURL string, add func(Hop)) {
	defer conn.Close()
	cfg, err := connect.TLSConfig(in.Target, in.TLSServerName)
	if err != nil {
		add(Hop{Hop: hops.TLS, Status: Fail, Object: in.Target.Server(), Detail: err.Error(), Fix: "fix the context's TLS settings"})
		return
	}
	tctx, cancel := context.WithTimeout(ctx, in.DialTimeout)
	defer cancel()
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(tctx); err != nil {
		f := hops.TLSError(err, proxyURL, cfg.ServerName, in.Target.ContextName)
		add(Hop{Hop: hops.TLS, Status: Fail, Object: "server name " + cfg.ServerName, Detail: f.Msg + ": " + err.Error(), Fix: f.Fix})
		return
	}
	add(Hop{Hop: hops.TLS, Status: OK, Object: "server name " + cfg.ServerName, Detail: "certificate verified with context " + in.Target.ContextName + "'s CA"})
}

// apiHops: /readyz and a SelfSubjectAccessReview, as the user, through fresh tunnels.
func apiHops(ctx context.Context, in Input, dial func(context.Context) (net.Conn, error), add func(Hop)) {
	cfg := rest.CopyConfig(in.REST)
	cfg.Proxy = nil
	cfg.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }
	if in.TLSServerName != "" {
		cfg.TLSClientConfig.ServerName = in.TLSServerName
	} else if cfg.TLSClientConfig.ServerName == "" {
		cfg.TLSClientConfig.ServerName = in.Target.ServerName()
	}
	cfg.Timeout = in.DialTimeout + 10*time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		add(Hop{Hop: hops.Readyz, Status: Fail, Detail: err.Error(), Fix: "fix the context"})
		add(Hop{Hop: hops.Access})
		return
	}
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		add(Hop{Hop: hops.Readyz, Status: Fail, Object: "GET /readyz", Detail: fmt.Sprintf("%v %s", err, strings.TrimSpace(string(body))),
			Fix: "the API server answers through the tunnel but is not ready (or refuses your credentials): kubectl get --raw '/readyz?verbose'"})
		add(Hop{Hop: hops.Access})
		return
	}
	add(Hop{Hop: hops.Readyz, Status: OK, Object: "GET /readyz", Detail: strings.TrimSpace(string(body))})

	user := "the current user"
	if cfg.Impersonate.UserName != "" {
		user = "user " + cfg.Impersonate.UserName + " (impersonated)"
	} else if ssr, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil && ssr.Status.UserInfo.Username != "" {
		// Name the user when the API server says who we are (a nicety: older servers lack it).
		user = "user " + ssr.Status.UserInfo.Username
	}
	obj := "list namespaces (SelfSubjectAccessReview)"
	ssar, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "list", Resource: "namespaces"}},
	}, metav1.CreateOptions{})
	switch {
	case err != nil:
		add(Hop{Hop: hops.Access, Status: Fail, Object: obj, Detail: err.Error(), Fix: "the API server refused the review itself: check your credentials"})
	case !ssar.Status.Allowed:
		reason := ssar.Status.Reason
		if reason == "" {
			reason = "no RBAC rule allows it"
		}
		add(Hop{Hop: hops.Access, Status: Fail, Object: obj, Detail: fmt.Sprintf("%s may not list namespaces: %s", user, reason),
			Fix: "the path works, but you are not authorized: have an admin bind a role, e.g. kubectl create clusterrolebinding NAME --clusterrole=view --user=USER"})
	default:
		add(Hop{Hop: hops.Access, Status: OK, Object: obj, Detail: user + " may list namespaces"})
	}
}
