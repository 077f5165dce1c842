package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// Authenticator decides who may open a tunnel (`--auth`). It sees the CONNECT head, never the
// tunnel's bytes: TLS stays end to end.
type Authenticator interface {
	// Authenticate returns who sent req and whether they may tunnel to req.Authority. A refusal is
	// an *AuthError; any other error means the decision could not be made (503: fail closed).
	Authenticate(ctx context.Context, req *ConnectRequest) (*Identity, error)
	// Challenges are the Proxy-Authenticate values sent with a 407.
	Challenges() []string
}

// Identity is the authenticated client of a tunnel.
type Identity struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
}

// AuthError is a refusal: 407 (no or bad credentials) or 403 (authenticated, not allowed). Reason is
// for the log; the client gets the status and a generic text.
type AuthError struct {
	Status   int
	Reason   string
	Identity *Identity // known when Status is 403
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Reason)
}

// Auth outcomes, the `outcome` label of apiproxy_proxy_auth_total (bounded: never a user name).
const (
	AuthAllowed         = "allowed"
	AuthUnauthenticated = "unauthenticated"
	AuthForbidden       = "forbidden"
	AuthUnavailable     = "unavailable"
)

// AuditRecord is one line of --audit-log: one per tunnel (or refused CONNECT), written when it ends.
type AuditRecord struct {
	Time      string   `json:"time"` // RFC 3339 start time
	ID        string   `json:"id"`
	Listener  string   `json:"listener"`
	Source    string   `json:"source"`
	User      string   `json:"user,omitempty"`
	Groups    []string `json:"groups,omitempty"`
	Auth      string   `json:"auth,omitempty"` // outcome, when --auth is on
	Authority string   `json:"authority,omitempty"`
	Dialed    string   `json:"dialed,omitempty"`
	Status    int      `json:"status,omitempty"` // the HTTP status answered (CONNECT listeners)
	BytesUp   int64    `json:"bytesUp"`
	BytesDown int64    `json:"bytesDown"`
	Duration  float64  `json:"durationSeconds"`
	End       string   `json:"end"` // the result label
	Error     string   `json:"error,omitempty"`
}

// AuditLog writes AuditRecords as JSON lines to one writer, whole lines at a time.
type AuditLog struct {
	mu sync.Mutex
	w  io.Writer
}

// NewAuditLog writes records to w.
func NewAuditLog(w io.Writer) *AuditLog { return &AuditLog{w: w} }

// Write appends one record.
func (a *AuditLog) Write(r *AuditRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	_, err = a.w.Write(b)
	return err
}
