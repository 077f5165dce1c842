package certs

import (
	"crypto/x509"
	"net"
	"testing"
	"time"
)

func TestIssueVerifiesAgainstCA(t *testing.T) {
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(Request{CommonName: "svc", DNSNames: []string{"svc.ns.svc"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Validity: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	if _, err := leaf.Certificate().Verify(x509.VerifyOptions{DNSName: "svc.ns.svc", Roots: pool}); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	if leaf.Certificate().NotAfter.After(ca.Certificate().NotAfter) {
		t.Fatalf("leaf outlives its CA")
	}
	if _, err := leaf.Certificate().Verify(x509.VerifyOptions{DNSName: "other", Roots: pool}); err == nil {
		t.Fatalf("leaf verified for a name it does not carry")
	}
	// A client-only certificate must not be accepted for server auth.
	client, err := ca.Issue(Request{CommonName: "user", Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Certificate().Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatalf("client certificate verified for server auth")
	}
}

func TestParseRoundTrip(t *testing.T) {
	ca, err := NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.Issue(Request{CommonName: "x", Client: true, Validity: time.Minute}); err != nil {
		t.Fatalf("parsed CA cannot issue: %v", err)
	}
	if _, err := Parse([]byte("junk"), ca.KeyPEM); err == nil {
		t.Fatal("junk certificate parsed")
	}
	if _, err := (&KeyPair{}).Issue(Request{Client: true}); err == nil {
		t.Fatal("empty CA issued")
	}
}
