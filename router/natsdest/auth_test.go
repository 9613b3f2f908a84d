package natsdest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sluice-cdi/sluice/router"
)

// TestTLS: a server that requires TLS takes the events of a destination
// trusting its CA (tls.ca_file); one that trusts only the system's roots
// cannot connect: a failure to retry (the operator fixes the CA), not a
// pause.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeCerts(t, dir)
	srv := startServer(t, "tls", fmt.Sprintf("tls {cert_file: %q, key_file: %q}", cert, key))
	_, js := connect(t, srv.url, nats.RootCAs(ca))
	makeStream(t, js, jetstream.StreamConfig{Name: "T", Subjects: []string{"T.>"}})

	d := newDest(t, Config{URLs: []string{srv.url}, Stream: "T", Subject: "T.{type}", TLS: TLSConfig{CAFile: ca}})
	if res := send(d, []router.Event{event("web", "alice", 0, "a")}); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
		t.Fatalf("with the CA: %+v", res)
	}
	if got := readAll(t, js, "T"); len(got) != 1 {
		t.Fatalf("stored %d", len(got))
	}
	untrusting := newDest(t, Config{URLs: []string{srv.url}, Stream: "T", Subject: "T.{type}", TLS: TLSConfig{Enabled: true}})
	res := send(untrusting, []router.Event{event("web", "alice", 1, "a")})
	if res.Err == nil || res.Pause || !strings.Contains(res.Err.Error(), "certificate") {
		t.Fatalf("without the CA: %+v", res)
	}
}

// TestNkeySeed: a user authenticated by an nkey seed file delivers; a seed
// the server does not know pauses the destination.
func TestNkeySeed(t *testing.T) {
	dir := t.TempDir()
	user, seedFile := writeSeed(t, dir, "user.nk")
	_, otherSeed := writeSeed(t, dir, "other.nk")
	srv := startServer(t, "nkey", fmt.Sprintf("authorization {users = [{nkey: %s}]}", user))
	opt, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	_, js := connect(t, srv.url, opt)
	makeStream(t, js, jetstream.StreamConfig{Name: "K", Subjects: []string{"K.>"}})

	d := newDest(t, Config{URLs: []string{srv.url}, Stream: "K", Subject: "K.{type}", NkeySeedFile: seedFile})
	if res := send(d, []router.Event{event("web", "alice", 0, "a")}); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
		t.Fatalf("with the seed: %+v", res)
	}
	stranger := newDest(t, Config{URLs: []string{srv.url}, Stream: "K", Subject: "K.{type}", NkeySeedFile: otherSeed})
	if res := send(stranger, []router.Event{event("web", "alice", 1, "a")}); !res.Pause {
		t.Fatalf("with an unknown seed: %+v", res)
	}
}

// writeSeed makes a user nkey, writes its seed and returns its public key.
func writeSeed(t *testing.T, dir, name string) (public, file string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	public, _ = kp.PublicKey()
	file = filepath.Join(dir, name)
	if err := os.WriteFile(file, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return public, file
}

// writeCerts writes a CA and a server certificate for 127.0.0.1 it signs.
func writeCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sluice test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}

// TestToken: a token the server knows delivers; another pauses.
func TestToken(t *testing.T) {
	srv := startServer(t, "token", `authorization {token: "s3cret-token"}`)
	_, js := connect(t, srv.url, nats.Token("s3cret-token"))
	makeStream(t, js, jetstream.StreamConfig{Name: "K", Subjects: []string{"K.>"}})
	d := newDest(t, Config{URLs: []string{srv.url}, Stream: "K", Subject: "K.{type}", Token: "s3cret-token"})
	if res := send(d, []router.Event{event("web", "alice", 0, "a")}); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
		t.Fatalf("with the token: %+v", res)
	}
	wrong := newDest(t, Config{URLs: []string{srv.url}, Stream: "K", Subject: "K.{type}", Token: "guess"})
	if res := send(wrong, []router.Event{event("web", "alice", 1, "a")}); !res.Pause {
		t.Fatalf("with a wrong token: %+v", res)
	}
}
