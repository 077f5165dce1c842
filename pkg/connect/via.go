package connect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	streamhttp "k8s.io/streaming/pkg/httpstream"

	"github.com/apiproxy/apiproxy/pkg/hops"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Relay opens byte streams to a port of the apiproxy proxy's pods in another cluster (the one named
// by --via), through a port-forward session on that cluster's API server, the way `kubectl
// port-forward` does (WebSocket first, SPDY as the fallback). One session carries the streams; when
// a stream does not open on it (the session broke, or the kubelet no longer answers on it), new
// dials go to a fresh session and the old one is retired: it keeps its live tunnels and is closed
// when the last one ends. Authorization stays with that API server: the user needs "create" on
// pods/portforward in Namespace.
type Relay struct {
	// Config reaches the --via cluster's API server; Context names it in messages.
	Config  *rest.Config
	Context string
	// Namespace and Selector find the proxy's pods; Port is the proxy's container port.
	Namespace, Selector string
	Port                int
	// Log reports progress (new sessions); may be nil.
	Log func(format string, args ...any)

	// mu guards the fields below and the sessions' bookkeeping; it is never held across network
	// I/O (listing pods, opening sessions or streams).
	mu       sync.Mutex
	session  *relaySession              // where new streams go
	sessions map[*relaySession]struct{} // every open session: the current one and retired ones
	opening  chan struct{}              // closed when the session being opened is ready (or failed)
	closed   bool
	replaced atomic.Int64
}

type relaySession struct {
	conn    streamhttp.Connection
	pod     string
	nextID  int
	fresh   bool // just opened: its first stream gets the whole dial time
	live    int  // streams handed out and not closed yet
	retired bool // takes no new streams; closed when live drops to 0
}

// ReplacedSessions counts the sessions retired because a stream did not open on them.
func (r *Relay) ReplacedSessions() int64 { return r.replaced.Load() }

// reusedSessionBound is how long a stream on an existing session may take before the dial moves to
// a fresh session: half the dial time left, at most 5 s (a live session answers in one round trip).
func reusedSessionBound(ctx context.Context) time.Duration {
	bound := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		if half := time.Until(dl) / 2; half < bound {
			bound = half
		}
	}
	return bound
}

// NoReadyPodError: nothing to port-forward to.
type NoReadyPodError struct {
	Context, Namespace, Selector string
	Found                        int // pods matching the selector, none of them ready
}

func (e *NoReadyPodError) Error() string {
	found := "no pod matches selector " + e.Selector
	if e.Found > 0 {
		found = fmt.Sprintf("%d pod(s) match selector %s, none is running and ready", e.Found, e.Selector)
	}
	return fmt.Sprintf("no ready pod of the apiproxy proxy in namespace %q of context %q (%s): install the proxy there (kubectl apiproxy install --context %s), wait for it to be ready, or name its namespace with --via-namespace",
		e.Namespace, e.Context, found, e.Context)
}

// PortForwardError: the API server of the --via cluster did not open the port-forward.
type PortForwardError struct {
	Context, Namespace, Pod string
	Forbidden               bool
	Err                     error
}

func (e *PortForwardError) Error() string {
	if e.Forbidden {
		return fmt.Sprintf("port-forward to the proxy pod %s/%s through context %q is forbidden: the relay needs \"create\" on \"pods/portforward\" in namespace %q of %q (grant it with a Role and RoleBinding, see the README): %v",
			e.Namespace, e.Pod, e.Context, e.Namespace, e.Context, e.Err)
	}
	return fmt.Sprintf("port-forward to the proxy pod %s/%s through context %q's API server failed: %v", e.Namespace, e.Pod, e.Context, e.Err)
}

func (e *PortForwardError) Unwrap() error { return e.Err }

// errRelayClosed: the Relay was closed.
var errRelayClosed = errors.New("the port-forward relay is closed")

// DialContext opens one stream to the proxy pod's port. network and addr are ignored: the stream
// always leads to the proxy (a tunnel.Dialer uses the Relay as its Forward dialer).
func (r *Relay) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	for attempt := 0; ; attempt++ {
		s, err := r.current(ctx)
		if err != nil {
			return nil, err
		}
		// A session that was already open may no longer answer (its streams then wait for a reply
		// that never comes): give it part of the time, and a fresh session the rest.
		r.mu.Lock()
		fresh := s.fresh
		s.fresh = false
		r.mu.Unlock()
		actx, cancel := ctx, context.CancelFunc(func() {})
		if attempt == 0 && !fresh {
			actx, cancel = context.WithTimeout(ctx, reusedSessionBound(ctx))
		}
		c, err := r.openStreamContext(actx, s)
		cancel()
		if err == nil {
			return c, nil
		}
		// New dials go to a fresh session; the live tunnels on this one are left alone.
		r.retire(s)
		if ctx.Err() != nil {
			return nil, &PortForwardError{Context: r.Context, Namespace: r.Namespace, Pod: s.pod, Err: fmt.Errorf("no stream opened on the port-forward session: %w", ctx.Err())}
		}
		if attempt > 0 {
			return nil, &PortForwardError{Context: r.Context, Namespace: r.Namespace, Pod: s.pod, Err: err}
		}
		if r.Log != nil {
			r.Log("relay: no stream opened on the port-forward session to pod %s/%s (%v); opening a new session for new tunnels, the open ones stay on the old one", r.Namespace, s.pod, err)
		}
	}
}

// Close ends every port-forward session, with the tunnels on them.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	sessions := r.sessions
	r.sessions, r.session = nil, nil
	r.mu.Unlock()
	var errs []error
	for s := range sessions {
		errs = append(errs, s.conn.Close())
	}
	return errors.Join(errs...)
}

// retire stops new streams from going to s; s is closed once its live streams are (at once if it
// has none, or if it broke).
func (r *Relay) retire(s *relaySession) {
	r.mu.Lock()
	if r.session == s {
		r.session = nil
		r.replaced.Add(1)
	}
	s.retired = true
	closeNow := s.live == 0 || isClosed(s.conn)
	if closeNow {
		delete(r.sessions, s)
	}
	r.mu.Unlock()
	if closeNow {
		_ = s.conn.Close()
	}
}

// streamDone is called when a stream handed out on s is closed.
func (r *Relay) streamDone(s *relaySession) {
	r.mu.Lock()
	s.live--
	closeNow := s.retired && s.live == 0
	if closeNow {
		delete(r.sessions, s)
	}
	r.mu.Unlock()
	if closeNow {
		_ = s.conn.Close()
	}
}

func isClosed(c streamhttp.Connection) bool {
	select {
	case <-c.CloseChan():
		return true
	default:
		return false
	}
}

// current returns the session new streams go to, or opens one. Only one dial opens a session at a
// time; the others wait for it, each within its own deadline, and none holds the mutex meanwhile.
func (r *Relay) current(ctx context.Context) (*relaySession, error) {
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, errRelayClosed
		}
		if s := r.session; s != nil {
			if !isClosed(s.conn) {
				r.mu.Unlock()
				return s, nil
			}
			// Broken (pod gone, API server restarted, idle timeout): its streams are gone too.
			r.session = nil
			delete(r.sessions, s)
		}
		if wait := r.opening; wait != nil {
			r.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, &PortForwardError{Context: r.Context, Namespace: r.Namespace, Err: fmt.Errorf("waiting for the port-forward session: %w", ctx.Err())}
			}
		}
		opened := make(chan struct{})
		r.opening = opened
		r.mu.Unlock()

		s, err := r.open(ctx)

		r.mu.Lock()
		r.opening = nil
		close(opened)
		if err == nil && r.closed {
			err = errRelayClosed
		}
		if err == nil {
			r.session = s
			if r.sessions == nil {
				r.sessions = map[*relaySession]struct{}{}
			}
			r.sessions[s] = struct{}{}
		}
		r.mu.Unlock()
		if err != nil {
			if s != nil {
				_ = s.conn.Close()
			}
			return nil, err
		}
		return s, nil
	}
}

// open starts a port-forward session to a ready proxy pod.
func (r *Relay) open(ctx context.Context) (*relaySession, error) {
	pod, err := r.readyPod(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := r.portForward(ctx, pod)
	if err != nil {
		return nil, err
	}
	if r.Log != nil {
		r.Log("relay: port-forward session to pod %s/%s port %d through context %q", r.Namespace, pod, r.Port, r.Context)
	}
	return &relaySession{conn: conn, pod: pod, fresh: true}, nil
}

// readyPod picks a ready, running proxy pod (the first by name, so sessions are predictable).
func (r *Relay) readyPod(ctx context.Context) (string, error) {
	cs, err := kubernetes.NewForConfig(r.Config)
	if err != nil {
		return "", err
	}
	pods, err := cs.CoreV1().Pods(r.Namespace).List(ctx, metav1.ListOptions{LabelSelector: r.Selector})
	if err != nil {
		return "", fmt.Errorf("listing the proxy's pods in namespace %q of context %q (selector %s): %w", r.Namespace, r.Context, r.Selector, err)
	}
	var ready []string
	for _, p := range pods.Items {
		if isReady(&p) {
			ready = append(ready, p.Name)
		}
	}
	if len(ready) == 0 {
		return "", &NoReadyPodError{Context: r.Context, Namespace: r.Namespace, Selector: r.Selector, Found: len(pods.Items)}
	}
	slices.Sort(ready)
	return ready[0], nil
}

func isReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// portForward opens the session with the dialers kubectl port-forward uses.
func (r *Relay) portForward(ctx context.Context, pod string) (streamhttp.Connection, error) {
	cs, err := kubernetes.NewForConfig(r.Config)
	if err != nil {
		return nil, err
	}
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(r.Namespace).Name(pod).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(r.Config)
	if err != nil {
		return nil, err
	}
	spdyDialer := spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	wsDialer, err := portforward.NewSPDYOverWebsocketDialerForStreaming(u, r.Config)
	if err != nil {
		return nil, err
	}
	dialer := portforward.NewFallbackDialerForStreaming(wsDialer, spdyDialer, func(err error) bool {
		return streamhttp.IsUpgradeFailure(err) || streamhttp.IsHTTPSProxyError(err)
	})

	// Dial takes no context: bound it here, and close a session that arrives too late.
	type result struct {
		conn streamhttp.Connection
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		conn, _, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		ch <- result{conn, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			return nil, &PortForwardError{Context: r.Context, Namespace: r.Namespace, Pod: pod, Forbidden: r.forbidden(ctx, pod), Err: res.err}
		}
		return res.conn, nil
	case <-ctx.Done():
		go func() {
			if res := <-ch; res.conn != nil {
				_ = res.conn.Close()
			}
		}()
		return nil, &PortForwardError{Context: r.Context, Namespace: r.Namespace, Pod: pod, Err: ctx.Err()}
	}
}

// forbidden asks the API server whether the user may port-forward to the pod: the upgrade errors
// of the two dialers carry the answer only as text.
func (r *Relay) forbidden(ctx context.Context, pod string) bool {
	cs, err := kubernetes.NewForConfig(r.Config)
	if err != nil {
		return false
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	review, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(cctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: r.Namespace, Verb: "create", Resource: "pods", Subresource: "portforward", Name: pod,
		}},
	}, metav1.CreateOptions{})
	return err == nil && !review.Status.Allowed
}

// openStreamContext bounds openStream (whose stream creation waits up to 30 s for the other side)
// by ctx; a stream that arrives late is closed.
func (r *Relay) openStreamContext(ctx context.Context, s *relaySession) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() { c, err := r.openStream(s); ch <- result{c, err} }()
	select {
	case res := <-ch:
		return res.c, res.err
	case <-ctx.Done():
		go func() {
			if res := <-ch; res.c != nil {
				_ = res.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// kubeletErrorGrace is how long a data stream's EOF waits for the kubelet's error message.
const kubeletErrorGrace = 250 * time.Millisecond

// errForwardEnded is a write after the kubelet ended the forwarded connection.
var errForwardEnded = errors.New("the proxy pod's side ended the forwarded connection (the kubelet reads no more from it)")

// openStream creates the error and data streams of one forwarded connection, as client-go's
// port-forwarder does per accepted local connection, and returns the data stream as a net.Conn.
func (r *Relay) openStream(s *relaySession) (net.Conn, error) {
	port := r.Port
	r.mu.Lock()
	s.nextID++
	id := s.nextID
	r.mu.Unlock()
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, strconv.Itoa(id))
	errStream, err := s.conn.CreateStream(headers)
	if err != nil {
		return nil, err
	}
	_ = errStream.Close() // nothing to send on it
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := s.conn.CreateStream(headers)
	if err != nil {
		s.conn.RemoveStreams(errStream)
		return nil, err
	}

	r.mu.Lock()
	s.live++
	r.mu.Unlock()
	// Reads go through a pipe, whose deadlines the tunnel code relies on (a stream has none);
	// writes go to the stream directly, so CloseWrite can half-close it.
	local, remote := net.Pipe()
	sc := &streamConn{Conn: local, pod: r.Namespace + "/" + s.pod, data: data}
	sc.release = func() {
		// Like client-go: discard what is still queued so the session is not blocked by it.
		_ = data.Reset()
		s.conn.RemoveStreams(errStream, data)
		r.streamDone(s)
	}
	errDone := make(chan struct{})
	go func() {
		defer close(errDone)
		msg, _ := io.ReadAll(errStream)
		if m := strings.TrimSpace(string(msg)); m != "" {
			sc.setErr(fmt.Errorf("proxy pod %s port %d: %s", sc.pod, port, m))
			_ = remote.Close()
		}
	}()
	go func() {
		_, err := io.Copy(remote, data)
		if err == nil {
			// The kubelet closes the data stream when the runtime's forward has returned, and
			// reads nothing from it after that: see streamConn.Write.
			sc.ended.Store(true)
		}
		// The kubelet's error, if any, explains why the data ended: let the reader see it. The
		// kubelet writes and closes the error stream before the data stream, and the session keeps
		// frames in order, so it is all but here already. It does not close it at all while our
		// side still sends (a half-close from the pod): then the reader must see EOF now.
		select {
		case <-errDone:
		case <-time.After(kubeletErrorGrace):
		}
		_ = remote.Close()
	}()
	return sc, nil
}

// streamConn is one forwarded connection; reads report the kubelet's error when it sent one.
type streamConn struct {
	net.Conn // the reading end of the pipe fed by the data stream
	pod      string
	data     streamhttp.Stream
	release  func()
	once     sync.Once
	// ended: the data stream reached EOF, so the kubelet has stopped reading it.
	ended atomic.Bool

	mu  sync.Mutex
	err error
}

// Write sends p on the data stream, unless the kubelet has ended the forward. Bytes sent after
// that are never read, and worse: the kubelet's SPDY connection hands each data frame to the
// stream's reader on one of five frame workers (by stream ID), waiting until it is taken, so an
// unread frame stalls that worker for good, and with it the SYN_STREAM of every later stream whose
// ID falls on it: those streams never open (the "stream-open stall" of a reused session). A
// client's close_notify after the server closed is such a write.
func (c *streamConn) Write(p []byte) (int, error) {
	if c.ended.Load() {
		return 0, errForwardEnded
	}
	return c.data.Write(p)
}

// CloseWrite half-closes the stream: the proxy pod's side reads EOF and may still answer.
func (c *streamConn) CloseWrite() error { return c.data.Close() }

func (c *streamConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (c *streamConn) setErr(err error) { c.mu.Lock(); c.err = err; c.mu.Unlock() }

func (c *streamConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		if c.err != nil {
			err = c.err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *streamConn) RemoteAddr() net.Addr { return podAddr(c.pod) }

type podAddr string

func (a podAddr) Network() string { return "portforward" }
func (a podAddr) String() string  { return string(a) }

// ViaDialer opens tunnels to an API server through two proxies: the Relay's proxy pod (in the --via
// cluster), which CONNECTs to RemoteProxy (the target cluster's proxy, as that cluster sees it),
// which CONNECTs to the API server. Errors are *HopError naming the hop that failed.
type ViaDialer struct {
	Relay *Relay
	// RemoteProxy is the target cluster's proxy as the --via cluster reaches it ("host:port").
	RemoteProxy string
	Timeout     time.Duration
	// Creds answer a remote proxy that asks for a token (407); nil sends none.
	Creds *ProxyCredentials
	// RelayCreds answer the relay (the --via cluster's proxy) when it asks for a token: its
	// TokenReview runs in the --via cluster, so the default is the --via context's user's token;
	// --via-proxy-token overrides it. nil sends none.
	RelayCreds *ProxyCredentials

	authRequired, relayAuthRequired atomic.Bool
}

// Hop names a leg of the relayed path.
type Hop string

const (
	HopPortForward Hop = "port-forward to the relay"      // laptop → --via API server → proxy pod
	HopRelay       Hop = "relay to the remote proxy"      // proxy pod → remote proxy
	HopRemoteProxy Hop = "remote proxy to its API server" // remote proxy → API server
)

// HopError is a relayed dial that failed, with the hop and advice.
type HopError struct {
	Hop Hop
	msg string
	Err error
}

func (e *HopError) Error() string { return e.msg }
func (e *HopError) Unwrap() error { return e.Err }

// relayLabel stands for the proxy pod in the inner CONNECT's messages: the Relay ignores addresses.
func (v *ViaDialer) relayLabel() string {
	return net.JoinHostPort("proxy."+v.Relay.Namespace+".pod", strconv.Itoa(v.Relay.Port))
}

// DialContext opens a tunnel to target (the API server's host:port, as the remote proxy's
// cluster names it).
func (v *ViaDialer) DialContext(ctx context.Context, network, target string) (net.Conn, error) {
	relay := &AuthDialer{Dialer: tunnel.Dialer{Proxy: v.relayLabel(), Timeout: v.Timeout, Forward: v.Relay}, Creds: v.RelayCreds}
	relay.Required.Store(v.relayAuthRequired.Load())
	inner := &hopDialer{d: relay}
	outer := &AuthDialer{Dialer: tunnel.Dialer{Proxy: v.RemoteProxy, Timeout: v.Timeout, Forward: inner}, Creds: v.Creds}
	outer.Required.Store(v.authRequired.Load())
	conn, err := outer.DialContext(ctx, network, target)
	if outer.Required.Load() {
		v.authRequired.Store(true)
	}
	if relay.Required.Load() {
		v.relayAuthRequired.Store(true)
	}
	if err != nil {
		if inner.ok {
			return nil, v.describeRemote(err)
		}
		return nil, v.describe(err)
	}
	return conn, nil
}

// hopDialer records whether the relay hop (port-forward plus the CONNECT to the remote proxy)
// succeeded, so a failure after it is put on the remote leg.
type hopDialer struct {
	d  tunnel.ContextDialer
	ok bool
}

func (h *hopDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := h.d.DialContext(ctx, network, addr)
	h.ok = err == nil
	return c, err
}

// describeRemote explains a failure of the CONNECT to the API server, sent to what the relay
// reached: the remote proxy when the --via cluster's proxy allows it, else that cluster's own API
// server (authorities outside --allow-target go to the upstream), which answers a plain-text
// CONNECT by closing the connection or with 400.
func (v *ViaDialer) describeRemote(err error) error {
	via := v.Relay.Context
	var ce *tunnel.ConnectError
	var nt *NoTokenError
	if errors.As(err, &nt) {
		return &HopError{Hop: HopRemoteProxy, Err: err, msg: nt.Error()}
	}
	notRelayed := &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf(
		"the proxy in %q did not relay to %s: no CONNECT proxy answered behind it (%v). Most likely %s is not among its --allow-target entries, so it sent the tunnel to %q's own API server: allow it with kubectl apiproxy install --relay in %q",
		via, v.RemoteProxy, err, v.RemoteProxy, via, via)}
	switch {
	case errors.As(err, &ce) && ce.StatusCode == http.StatusBadRequest:
		return notRelayed
	case errors.As(err, &ce) && (ce.StatusCode == http.StatusProxyAuthRequired || ce.StatusCode == http.StatusForbidden || ce.StatusCode == http.StatusServiceUnavailable):
		f := hops.ConnectAnswer(ce.StatusCode, ce.Status, v.RemoteProxy)
		return &HopError{Hop: HopRemoteProxy, Err: err, msg: fmt.Sprintf("the remote %s (reached through %q): %s", f.Msg, via, f.Fix)}
	case errors.As(err, &ce):
		return &HopError{Hop: HopRemoteProxy, Err: err, msg: fmt.Sprintf(
			"the remote proxy %s (reached through %q) answered %q: it could not open the tunnel to its API server (check its --upstream and its logs)", v.RemoteProxy, via, ce.Status)}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return notRelayed
	case errors.Is(err, context.DeadlineExceeded):
		return &HopError{Hop: HopRemoteProxy, Err: err, msg: fmt.Sprintf(
			"the relay through %q reached %s, but no CONNECT answer came in time: is %s an apiproxy proxy, and allowed by the proxy in %q? (raise --dial-timeout if the path is slow): %v", via, v.RemoteProxy, v.RemoteProxy, via, err)}
	}
	return &HopError{Hop: HopRemoteProxy, Err: err, msg: fmt.Sprintf("the CONNECT to the API server through the remote proxy %s (relayed by %q) failed: %v", v.RemoteProxy, via, err)}
}

func (v *ViaDialer) describe(err error) error {
	via := v.Relay.Context
	var nr *NoReadyPodError
	var pf *PortForwardError
	if errors.As(err, &nr) {
		return &HopError{Hop: HopPortForward, msg: nr.Error(), Err: err}
	}
	if errors.As(err, &pf) {
		return &HopError{Hop: HopPortForward, msg: pf.Error(), Err: err}
	}
	var nt *NoTokenError
	if errors.As(err, &nt) {
		return &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf("the relay (the proxy in %q): %s", via, nt.Error())}
	}
	var ce *tunnel.ConnectError
	if errors.As(err, &ce) {
		if ce.Proxy == v.relayLabel() {
			switch ce.StatusCode {
			case http.StatusProxyAuthRequired:
				sent := "no token"
				if v.RelayCreds != nil {
					sent = v.RelayCreds.Describe()
				}
				return &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf(
					"the proxy in %q authenticates tunnels and refused %s (407 Proxy Authentication Required): the relay reviews the token in %q, so give a token of that cluster with the right to tunnel there: --via-proxy-token TOKEN (e.g. \"$(kubectl --context %s create token NAME -n NAMESPACE)\"), or a --via context whose user has a bearer token", via, sent, via, via)}
			case http.StatusForbidden:
				return &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf(
					"the proxy in %q refused to relay to %s (%s): either %s is not among its --allow-target entries (kubectl apiproxy install --relay in %q), or the relay's token may not tunnel there (grant create on tunnels.apiproxy.io in %q)", via, v.RemoteProxy, ce.Status, v.RemoteProxy, via, via)}
			case http.StatusBadGateway, http.StatusGatewayTimeout:
				return &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf(
					"the proxy in %q could not reach the remote proxy %s (%s): is that address reachable from inside %q (fabric up, right --remote/--proxy-port)?", via, v.RemoteProxy, ce.Status, via)}
			default:
				return &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf(
					"the proxy in %q refused to relay to %s (%s): allow it there (kubectl apiproxy install --relay, or --allow-target %s on its agent proxy)", via, v.RemoteProxy, ce.Status, v.RemoteProxy)}
			}
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf("the relayed tunnel through %q to %s did not open in time: raise --dial-timeout if the path is slow: %v", via, v.RemoteProxy, err)}
	}
	return &HopError{Hop: HopRelay, Err: err, msg: fmt.Sprintf("the relayed tunnel through %q to %s failed: %v", via, v.RemoteProxy, err)}
}
