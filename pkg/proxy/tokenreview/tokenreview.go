// Package tokenreview is `agent proxy --auth tokenreview`: a CONNECT carries a Kubernetes bearer
// token in Proxy-Authorization; the API server says who it belongs to (TokenReview) and whether
// that user may open the tunnel (SubjectAccessReview: verb create on tunnels.apiproxy.io, resource
// name the CONNECT authority), so tunnels are granted with ordinary RBAC. Tokens are never logged
// and never kept: the review cache holds them only as keyed hashes.
package tokenreview

import (
	"context"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	tokencache "k8s.io/apiserver/pkg/authentication/token/cache"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/proxy"
)

// The RBAC attributes of a tunnel, granted by a ClusterRole with the rule {apiGroups: [apiproxy.io],
// resources: [tunnels], verbs: [create]} (hops.TunnelRoleJSON). `kubectl create clusterrole
// --resource=tunnels.apiproxy.io` refuses it: no API serves tunnels, and kubectl checks discovery.
const (
	Verb     = "create"
	Group    = "apiproxy.io"
	Resource = "tunnels"
)

// Options tune the caches and the review budget. Zero values take the defaults.
type Options struct {
	// TokenTTL is how long a TokenReview's answer is reused (default 10s, as the API server caches
	// webhook tokens); InvalidTokenTTL the same for rejected tokens (default 5s).
	TokenTTL, InvalidTokenTTL time.Duration
	// AllowedTTL and DeniedTTL are how long a SubjectAccessReview's answer is reused (defaults 10s
	// and 5s), so that a revoked binding takes effect within that time.
	AllowedTTL, DeniedTTL time.Duration
	// MaxUnseenReviews caps the TokenReviews in flight for tokens not found valid within
	// KnownTokenTTL (default 16); a CONNECT with such a token beyond the cap is refused at once
	// (503) instead of waiting, so made-up tokens cost a bounded number of requests and
	// goroutines, and tokens already known valid are reviewed on their own lane.
	MaxUnseenReviews int
	// UnseenClient, when set, makes the TokenReviews of unseen tokens, so that they spend their
	// own client-side rate limit and not that of client (used for known tokens and the
	// SubjectAccessReviews).
	UnseenClient kubernetes.Interface
	// KnownTokenTTL is how long a token found valid counts as known (default 1h). Known tokens are
	// remembered only as keyed hashes.
	KnownTokenTTL time.Duration
	// ReviewTimeout bounds one TokenReview (default 10s, the proxy's default auth timeout): the
	// token cache runs reviews on a context of its own with a 30 s timeout, which would keep an
	// unseen-token slot long after the CONNECT gave up.
	ReviewTimeout time.Duration
	// Registerer receives the review metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// Authenticator implements proxy.Authenticator with TokenReview and SubjectAccessReview.
type Authenticator struct {
	tokens    authenticator.Token
	client    kubernetes.Interface
	decisions *cache.LRUExpireCache
	opts      Options
	// logger is what client-go logs the reviews with: capped below the level at which it logs
	// request bodies, the tokens under review.
	logger logr.Logger
}

var _ proxy.Authenticator = (*Authenticator)(nil)

// New reviews tokens and access with client (the proxy's own API server).
func New(client kubernetes.Interface, opts Options) (*Authenticator, error) {
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = 10 * time.Second
	}
	if opts.InvalidTokenTTL <= 0 {
		opts.InvalidTokenTTL = 5 * time.Second
	}
	if opts.AllowedTTL <= 0 {
		opts.AllowedTTL = 10 * time.Second
	}
	if opts.DeniedTTL <= 0 {
		opts.DeniedTTL = 5 * time.Second
	}
	if opts.MaxUnseenReviews <= 0 {
		opts.MaxUnseenReviews = 16
	}
	if opts.KnownTokenTTL <= 0 {
		opts.KnownTokenTTL = time.Hour
	}
	if opts.ReviewTimeout <= 0 {
		opts.ReviewTimeout = 10 * time.Second
	}
	if opts.UnseenClient == nil {
		opts.UnseenClient = client
	}
	m, err := newReviewMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("token review metrics: %w", err)
	}
	logger := capVerbosity(klog.Background().WithName("tokenreview"), maxClientVerbosity)
	r := &reviewer{client: client, unseenClient: opts.UnseenClient, logger: logger, m: m, timeout: opts.ReviewTimeout,
		unseenSlots: make(chan struct{}, opts.MaxUnseenReviews),
		known:       cache.NewLRUExpireCache(4096), knownTTL: opts.KnownTokenTTL, hashKey: newHashKey()}
	return &Authenticator{
		// Errors (an unreachable API server, too many reviews) are not cached: the next CONNECT
		// asks again.
		tokens:    tokencache.New(r, false, opts.TokenTTL, opts.InvalidTokenTTL),
		client:    client,
		decisions: cache.NewLRUExpireCache(4096),
		opts:      opts,
		logger:    logger,
	}, nil
}

// Challenges are sent with 407: client-go sends Basic for a proxy-url with user info, other
// clients a bearer token.
func (a *Authenticator) Challenges() []string {
	return []string{`Basic realm="apiproxy"`, `Bearer realm="apiproxy"`}
}

// Authenticate checks req's Proxy-Authorization and the user's right to tunnel to req.Authority.
func (a *Authenticator) Authenticate(ctx context.Context, req *proxy.ConnectRequest) (*proxy.Identity, error) {
	ctx = logr.NewContext(ctx, a.logger)
	token, err := Token(req.Header.Values("Proxy-Authorization"))
	if err != nil {
		return nil, &proxy.AuthError{Status: http.StatusProxyAuthRequired, Reason: err.Error()}
	}
	resp, ok, err := a.tokens.AuthenticateToken(ctx, token)
	if err != nil {
		return nil, fmt.Errorf("TokenReview: %w", err)
	}
	if !ok {
		return nil, &proxy.AuthError{Status: http.StatusProxyAuthRequired, Reason: "the token is not valid (TokenReview did not authenticate it)"}
	}
	u := resp.User
	id := &proxy.Identity{User: u.GetName(), Groups: u.GetGroups()}
	allowed, err := a.allowed(ctx, u, req.Authority)
	if err != nil {
		return nil, fmt.Errorf("SubjectAccessReview: %w", err)
	}
	if !allowed {
		return nil, &proxy.AuthError{Status: http.StatusForbidden, Identity: id,
			Reason: fmt.Sprintf("user %q may not create %s.%s %q", u.GetName(), Resource, Group, req.Authority)}
	}
	return id, nil
}

// Token extracts the token of a Proxy-Authorization header: "Bearer TOKEN", or "Basic" with the
// token as the password. The error never contains the header's value.
func Token(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", errors.New("no Proxy-Authorization header")
	case 1:
	default:
		return "", errors.New("more than one Proxy-Authorization header")
	}
	scheme, cred, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	cred = strings.TrimSpace(cred)
	var token string
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		token = cred
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return "", errors.New("Proxy-Authorization Basic is not valid base64")
		}
		_, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return "", errors.New("Proxy-Authorization Basic has no password (put the token there)")
		}
		token = pass
	default:
		return "", errors.New("Proxy-Authorization scheme is neither Bearer nor Basic")
	}
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return "", errors.New("Proxy-Authorization carries no usable token")
	}
	return token, nil
}

// allowed asks (or remembers) whether u may create the tunnel named authority.
func (a *Authenticator) allowed(ctx context.Context, u user.Info, authority string) (bool, error) {
	key := decisionKey(u, authority)
	if v, ok := a.decisions.Get(key); ok {
		return v.(bool), nil
	}
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.GetExtra() {
		extra[k] = v
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: u.GetName(), UID: u.GetUID(), Groups: u.GetGroups(), Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{Verb: Verb, Group: Group, Resource: Resource, Name: authority},
	}}
	res, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	if res.Status.EvaluationError != "" && !res.Status.Allowed {
		// The authorizer could not decide: no decision to cache, and no tunnel (fail closed).
		return false, fmt.Errorf("evaluation error: %s", res.Status.EvaluationError)
	}
	ttl := a.opts.DeniedTTL
	if res.Status.Allowed {
		ttl = a.opts.AllowedTTL
	}
	a.decisions.Add(key, res.Status.Allowed, ttl)
	return res.Status.Allowed, nil
}

func decisionKey(u user.Info, authority string) string {
	var b strings.Builder
	for _, s := range []string{u.GetName(), u.GetUID(), authority} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	groups := append([]string(nil), u.GetGroups()...)
	sort.Strings(groups)
	for _, g := range groups {
		b.WriteString(g)
		b.WriteByte(1)
	}
	keys := make([]string, 0, len(u.GetExtra()))
	for k := range u.GetExtra() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(2)
		b.WriteString(strings.Join(u.GetExtra()[k], "\x03"))
		b.WriteByte(2)
	}
	return b.String()
}

// ErrTooManyReviews refuses a token no one has seen valid while MaxUnseenReviews reviews of such
// tokens are in flight.
var ErrTooManyReviews = errors.New("too many reviews of unseen tokens in flight")

// reviewer is an authenticator.Token asking the API server with a TokenReview. It is called on a
// cache miss only (the cache also merges concurrent reviews of one token).
type reviewer struct {
	client, unseenClient kubernetes.Interface
	logger               logr.Logger
	m                    *reviewMetrics
	timeout              time.Duration
	unseenSlots          chan struct{}
	// known holds keyed hashes of the tokens found valid within knownTTL: their re-reviews don't
	// queue behind, nor spend the budget of, tokens no one has seen valid.
	known    *cache.LRUExpireCache
	knownTTL time.Duration
	hashKey  []byte
}

func (r *reviewer) AuthenticateToken(ctx context.Context, token string) (*authenticator.Response, bool, error) {
	// The token cache calls us on a context of its own: the capped logger goes on it here.
	ctx = logr.NewContext(ctx, r.logger)
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	key := r.hash(token)
	client := r.client
	if _, known := r.known.Get(key); !known {
		select {
		case r.unseenSlots <- struct{}{}:
			defer func() { <-r.unseenSlots }()
		default:
			r.m.refused.Inc()
			return nil, false, ErrTooManyReviews
		}
		client = r.unseenClient
		r.m.inFlight.WithLabelValues("unseen").Inc()
		defer r.m.inFlight.WithLabelValues("unseen").Dec()
	} else {
		r.m.inFlight.WithLabelValues("known").Inc()
		defer r.m.inFlight.WithLabelValues("known").Dec()
	}
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return nil, false, err
	}
	if !tr.Status.Authenticated {
		r.known.Remove(key)
		return nil, false, nil
	}
	r.known.Add(key, struct{}{}, r.knownTTL)
	info := &user.DefaultInfo{Name: tr.Status.User.Username, UID: tr.Status.User.UID, Groups: tr.Status.User.Groups}
	if len(tr.Status.User.Extra) > 0 {
		info.Extra = map[string][]string{}
		for k, v := range tr.Status.User.Extra {
			info.Extra[k] = v
		}
	}
	return &authenticator.Response{User: info}, true, nil
}

// hash keys the known-token set: an HMAC with a per-process key, so the set holds no token.
func (r *reviewer) hash(token string) string {
	h := hmac.New(sha256.New, r.hashKey)
	h.Write([]byte(token))
	return string(h.Sum(nil))
}

func newHashKey() []byte {
	k := make([]byte, 32)
	if _, err := crand.Read(k); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return k
}

type reviewMetrics struct {
	inFlight *prometheus.GaugeVec
	refused  prometheus.Counter
}

func newReviewMetrics(reg prometheus.Registerer) (*reviewMetrics, error) {
	m := &reviewMetrics{
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "apiproxy_proxy_token_reviews_in_flight",
			Help: "TokenReviews in flight for --auth tokenreview, by token: unseen (not found valid lately; capped by --max-unseen-reviews) or known.",
		}, []string{"token"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "apiproxy_proxy_token_reviews_refused_total",
			Help: "CONNECTs answered 503 without a TokenReview because --max-unseen-reviews reviews of unseen tokens were in flight.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.inFlight, m.refused} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
