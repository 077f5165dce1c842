package tunnel

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// Credentials in a proxy URL (http://USER:PASSWORD@HOST:PORT) or a credentials file become the
// CONNECT's Proxy-Authorization:
//   - no user, or the user "token" (http://:TOKEN@HOST:PORT, http://token:TOKEN@HOST:PORT): "Bearer TOKEN",
//     what an apiproxy proxy with --auth tokenreview checks;
//   - any other user: "Basic base64(USER:PASSWORD)", what squid, tinyproxy and client-go's proxy-url
//     send (an apiproxy proxy takes the password of Basic as the token too).
//
// They are never printed: messages name the proxy by host and port only (Redact).

// BearerUser is the proxy URL user that asks for Bearer instead of Basic.
const BearerUser = "token"

// ProxyAuthorization returns the Proxy-Authorization value for the user info of the proxy URL
// ("" when it has none).
func ProxyAuthorization(proxy string) (string, error) {
	if !strings.Contains(proxy, "://") {
		return "", nil
	}
	u, err := url.Parse(proxy)
	if err != nil {
		return "", fmt.Errorf("invalid proxy URL %s: %w", Redact(proxy), errors.Unwrap(err))
	}
	if u.User == nil {
		return "", nil
	}
	pass, _ := u.User.Password()
	return authorization(u.User.Username(), pass)
}

// CredentialsAuthorization turns the content of a credentials file into a Proxy-Authorization
// value: "USER:PASSWORD" as in a proxy URL's user info (not URL-encoded), or a bare token (no colon),
// sent as Bearer. Surrounding white space (a trailing newline) is ignored.
func CredentialsAuthorization(content string) (string, error) {
	content = strings.TrimSpace(content)
	if content == "" {
		return "", errors.New("the credentials are empty")
	}
	user, pass, ok := strings.Cut(content, ":")
	if !ok {
		return authorization("", content)
	}
	return authorization(user, pass)
}

func authorization(user, pass string) (string, error) {
	if strings.ContainsAny(user+pass, "\r\n\x00") {
		return "", errors.New("the proxy credentials hold a line break or NUL")
	}
	if user == "" || user == BearerUser {
		if pass == "" {
			return "", errors.New("the proxy credentials have no token: use http://token:TOKEN@HOST:PORT (Bearer) or http://USER:PASSWORD@HOST:PORT (Basic)")
		}
		return "Bearer " + pass, nil
	}
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)), nil
}

// Redact returns the proxy URL without its user info, for messages and logs.
func Redact(proxy string) string {
	scheme, rest, ok := strings.Cut(proxy, "://")
	if !ok {
		return proxy
	}
	// The user info ends at the last '@' before the host (a password may hold '@' unescaped).
	host := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		host = rest[:i]
	}
	if at := strings.LastIndex(host, "@"); at >= 0 {
		return scheme + "://" + rest[at+1:]
	}
	return proxy
}

// StripCredentials returns the proxy URL without its user info, and whether it had any.
func StripCredentials(proxy string) (string, bool) {
	r := Redact(proxy)
	return r, r != proxy
}

// CredentialsFile reads a credentials file (a mounted Secret's key) for each use, keeping the last
// result while the file's modification time and size stay the same: a rotated Secret is used from
// the next dial on, without a restart.
type CredentialsFile struct {
	Path string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	value   string
}

// Authorization returns the file's Proxy-Authorization value.
func (f *CredentialsFile) Authorization() (string, error) {
	st, err := os.Stat(f.Path)
	if err != nil {
		return "", fmt.Errorf("proxy credentials file: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.value != "" && st.ModTime().Equal(f.modTime) && st.Size() == f.size {
		return f.value, nil
	}
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return "", fmt.Errorf("proxy credentials file: %w", err)
	}
	v, err := CredentialsAuthorization(string(b))
	if err != nil {
		return "", fmt.Errorf("proxy credentials file %s: %w", f.Path, err)
	}
	f.value, f.modTime, f.size = v, st.ModTime(), st.Size()
	return v, nil
}
