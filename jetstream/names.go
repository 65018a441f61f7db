package jetstream

import (
	"strings"
)

// Names maps logical asset names and subjects onto real ones, honouring the subject prefix so that
// several deployments can share one NATS account.
type Names struct {
	prefix string // subject prefix without trailing dot, may be ""
}

// NewNames returns the name mapping for a subject prefix ("" for none). A trailing dot is ignored.
func NewNames(prefix string) Names {
	return Names{prefix: strings.TrimSuffix(prefix, ".")}
}

// Prefix is the subject prefix without its trailing dot.
func (n Names) Prefix() string { return n.prefix }

// Subject joins parts with dots and prepends the prefix.
func (n Names) Subject(parts ...string) string {
	s := strings.Join(parts, ".")
	if n.prefix == "" {
		return s
	}
	return n.prefix + "." + s
}

// Unprefix strips the prefix from a full subject (the reverse of Subject).
func (n Names) Unprefix(subject string) string {
	if n.prefix == "" {
		return subject
	}
	return strings.TrimPrefix(subject, n.prefix+".")
}

// Asset maps a logical stream, consumer or bucket name onto the real one. With a prefix "acme.eu"
// the stream "TRACKER" becomes "ACME_EU_TRACKER".
func (n Names) Asset(name string) string {
	if n.prefix == "" {
		return name
	}
	p := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		default:
			return '_'
		}
	}, n.prefix)
	return p + "_" + name
}

// Token makes s safe to use as one subject token (no dots, spaces or wildcards). Empty becomes "_".
func Token(s string) string {
	if s == "" {
		return "_"
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '%' || c == '.' || c == '*' || c == '>' || c <= ' ' || c == 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' || c == '*' || c == '>' || c <= ' ' || c == 0x7f || c == '%' {
			b.WriteString("%")
			b.WriteByte("0123456789ABCDEF"[c>>4])
			b.WriteByte("0123456789ABCDEF"[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
