package sink

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER bytes (the registry key).
func Fingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

// FingerprintPEM returns the fingerprint and subject CN of the first certificate in a PEM block.
func FingerprintPEM(certPEM []byte) (fp, cn string, err error) {
	for {
		var b *pem.Block
		b, certPEM = pem.Decode(certPEM)
		if b == nil {
			return "", "", errors.New("no CERTIFICATE block in PEM")
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return "", "", fmt.Errorf("parse certificate: %w", err)
		}
		return Fingerprint(b.Bytes), c.Subject.CommonName, nil
	}
}

// DevCerts are the paths of the generated development PKI.
type DevCerts struct {
	Dir                   string
	CA, CAKey             string
	Server, ServerKey     string
	Client, ClientKey     string
	ClientFingerprint, CN string
}

// DevClientID is the client id the generated development client certificate is registered as.
const DevClientID = "dev-client"

// EnsureDevCerts creates (once) a development CA, a server certificate for localhost and the
// machine's host name, and one client certificate, under dir. Existing files are reused, so the
// call is idempotent across restarts.
func EnsureDevCerts(dir string) (DevCerts, error) {
	d := DevCerts{Dir: dir,
		CA: filepath.Join(dir, "ca.pem"), CAKey: filepath.Join(dir, "ca-key.pem"),
		Server: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		Client: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
		CN: DevClientID}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return d, fmt.Errorf("dev certs dir %s: %w", dir, err)
	}
	exists := func(p ...string) bool {
		for _, f := range p {
			if _, err := os.Stat(f); err != nil {
				return false
			}
		}
		return true
	}
	if !exists(d.CA, d.CAKey, d.Server, d.ServerKey, d.Client, d.ClientKey) {
		ca, err := NewCA("jetbridge sink development CA")
		if err != nil {
			return d, err
		}
		host, _ := os.Hostname()
		names := []string{"localhost"}
		if host != "" && host != "localhost" {
			names = append(names, host)
		}
		srv, err := ca.Issue("localhost", names, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, false)
		if err != nil {
			return d, err
		}
		cli, err := ca.Issue(DevClientID, nil, nil, true)
		if err != nil {
			return d, err
		}
		for _, f := range []struct {
			path string
			data []byte
			mode os.FileMode
		}{{d.CA, ca.CertPEM, 0o644}, {d.CAKey, ca.KeyPEM, 0o600}, {d.Server, srv.CertPEM, 0o644}, {d.ServerKey, srv.KeyPEM, 0o600},
			{d.Client, cli.CertPEM, 0o644}, {d.ClientKey, cli.KeyPEM, 0o600}} {
			if err := writeFileAtomic(f.path, f.data, f.mode); err != nil {
				return d, err
			}
		}
	}
	pemBytes, err := os.ReadFile(d.Client)
	if err != nil {
		return d, fmt.Errorf("read dev client cert: %w", err)
	}
	d.ClientFingerprint, d.CN, err = FingerprintPEM(pemBytes)
	if err != nil {
		return d, fmt.Errorf("dev client cert %s: %w", d.Client, err)
	}
	return d, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}

// CA is a certificate authority able to issue certificates (development and tests).
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// Issued is a certificate issued by a CA.
type Issued struct {
	CertPEM, KeyPEM []byte
	DER             []byte
}

// TLS returns the issued certificate as a tls.Certificate.
func (i Issued) TLS() (tls.Certificate, error) { return tls.X509KeyPair(i.CertPEM, i.KeyPEM) }

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// NewCA creates a self-signed ECDSA P-256 CA valid for ten years.
func NewCA(cn string) (*CA, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse ca: %w", err)
	}
	kp, err := keyPEM(k)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: k, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: kp}, nil
}

// Issue creates a leaf certificate for cn; client selects client-auth usage, otherwise server-auth
// with the given DNS names and IPs.
func (ca *CA) Issue(cn string, dns []string, ips []net.IP, client bool) (Issued, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issued{}, fmt.Errorf("key for %s: %w", cn, err)
	}
	sn, err := serial()
	if err != nil {
		return Issued{}, err
	}
	tpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(5, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, DNSNames: dns, IPAddresses: ips}
	if client {
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.Cert, &k.PublicKey, ca.Key)
	if err != nil {
		return Issued{}, fmt.Errorf("issue %s: %w", cn, err)
	}
	kp, err := keyPEM(k)
	if err != nil {
		return Issued{}, err
	}
	return Issued{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: kp, DER: der}, nil
}

// serverTLS builds the listener's TLS configuration: TLS 1.2+, a client certificate required,
// verified against clientCA when one is given (otherwise the fingerprint registry alone decides).
func serverTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("sink tls key pair %s/%s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert}
	if clientCA != "" {
		pemBytes, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("sink client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("sink client ca %s: no certificate", clientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
