package proxy

import "github.com/prometheus/client_golang/prometheus"

// Results of a tunnel, the `result` label of apiproxy_proxy_tunnels_total and of the log line.
const (
	ResultOK            = "ok"             // relayed until both sides closed
	ResultIdle          = "idle_timeout"   // closed by --idle-timeout
	ResultRelayError    = "relay_error"    // a side failed mid-stream
	ResultDrained       = "drain_closed"   // still open when --shutdown-grace ran out
	ResultBadRequest    = "bad_request"    // 400
	ResultMethod        = "bad_method"     // 405
	ResultHeaderTimeout = "header_timeout" // request head not complete within --header-timeout
	ResultClientGone    = "client_gone"    // client closed before sending a full head
	ResultOverCapacity  = "over_capacity"  // 503, --max-tunnels reached
	ResultDialRefused   = "dial_failed"    // 502
	ResultDialTimeout   = "dial_timeout"   // 504
	// ResultNoRequest: the client closed without sending a byte (a TCP health probe). Counted, not
	// logged.
	ResultNoRequest = "no_request"
	// ResultEvicted: 408 to the oldest connection still without a head when --max-pending-heads
	// was reached.
	ResultEvicted = "pending_evicted"
	// ResultDrainRefused: 503 to a connection that had no complete head when the drain began.
	ResultDrainRefused = "drain_refused"
	// ResultUnauthenticated, ResultForbidden, ResultAuthUnavailable: 407, 403, 503 from --auth.
	ResultUnauthenticated = "unauthenticated"
	ResultForbidden       = "forbidden"
	ResultAuthUnavailable = "auth_unavailable"
)

// Listener kinds, the `listener` label.
const (
	KindConnect = "connect"
	KindTCP     = "tcp"
)

type metrics struct {
	active   *prometheus.GaugeVec
	total    *prometheus.CounterVec
	bytesUp  prometheus.Counter
	bytesDn  prometheus.Counter
	dialTime *prometheus.HistogramVec
	pending  prometheus.Gauge
	refused  *prometheus.CounterVec
	auth     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "apiproxy_proxy_tunnels_active",
			Help: "Tunnels currently relaying bytes.",
		}, []string{"listener"}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "apiproxy_proxy_tunnels_total",
			Help: "Connections handled, by listener kind and result.",
		}, []string{"listener", "result"}),
		dialTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "apiproxy_proxy_dial_duration_seconds",
			Help:    "Time to dial the upstream (or allowed target), including a CONNECT through --upstream-proxy.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "apiproxy_proxy_pending_heads",
			Help: "Accepted CONNECT connections whose request head is not complete yet (bounded by --max-pending-heads).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "apiproxy_proxy_sources_refused_total",
			Help: "Connections closed unread because their source is outside --allow-source, by listener kind.",
		}, []string{"listener"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "apiproxy_proxy_auth_total",
			Help: "CONNECT requests checked by --auth, by outcome: allowed, unauthenticated (407), forbidden (403), unavailable (503).",
		}, []string{"outcome"}),
	}
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "apiproxy_proxy_bytes_total",
		Help: "Bytes relayed, by direction: client_to_upstream or upstream_to_client.",
	}, []string{"direction"})
	m.bytesUp = bytes.WithLabelValues("client_to_upstream")
	m.bytesDn = bytes.WithLabelValues("upstream_to_client")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.active, m.total, bytes, m.dialTime, m.pending, m.refused, m.auth} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
