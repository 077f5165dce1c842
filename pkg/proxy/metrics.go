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
	}
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "apiproxy_proxy_bytes_total",
		Help: "Bytes relayed, by direction: client_to_upstream or upstream_to_client.",
	}, []string{"direction"})
	m.bytesUp = bytes.WithLabelValues("client_to_upstream")
	m.bytesDn = bytes.WithLabelValues("upstream_to_client")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.active, m.total, bytes, m.dialTime} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
