package kafka

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-cdi/sluice/router"
)

// TestTLS: over TLS, a client that trusts the brokers' certificate
// delivers; one that does not pauses the destination, naming the
// certificate.
func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	fc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fc.Close)
	c := &cluster{addrs: fc.ListenAddrs(), fake: fc}
	good := c.dest(t, Config{Topic: "t", TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
	if res := good.Send(context.Background(), []router.Event{event("a", 0, "track")}); res.Status != 200 {
		t.Fatalf("trusted: %+v", res)
	}
	_, other := selfSigned(t)
	bad := c.dest(t, Config{Topic: "t", TLS: &tls.Config{RootCAs: other, MinVersion: tls.VersionTLS12}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := bad.Send(ctx, []router.Event{event("a", 1, "track")})
	if !res.Pause || res.Err == nil || ctx.Err() != nil {
		t.Fatalf("untrusted: want a pause at once, got %+v", res)
	}
	t.Logf("untrusted: %v", res.Err)
}

// selfSigned makes a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "kfake"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
