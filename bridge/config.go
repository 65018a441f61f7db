package bridge

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// Config is the pod's own configuration (adapters register their own flags).
type Config struct {
	DataDir           string
	NATSListen        string
	NATSMonitorListen string
	NATSURL           string
	NATSInProcess     bool
	NATSCreds         string
	NATSNkey          string
	NATSUser          string
	NATSPassword      string
	NATSTLSCA         string
	NATSTLSCert       string
	NATSTLSKey        string
	Replicas          int
	Durability        string
	AdminListen       string
	AdminToken        string
	SubjectPrefix     string
	DrainTimeout      time.Duration
	StartupTimeout    time.Duration
	MaxMessage        int
	ZMQMaxMessage     int
	LogLevel          string
	LogFormat         string
	// Listen holds each adapter listener's address by ListenerSpec.Name (filled by RegisterFlags).
	Listen map[string]*string
}

// RegisterFlags registers the pod's flags, every adapter listener's flag and every adapter's own
// flags on fs.
func (c *Config) RegisterFlags(fs *pflag.FlagSet, adapters []Adapter) {
	fs.StringVar(&c.DataDir, "data", "./data", "data folder (embedded NATS store, generated certificates)")
	fs.StringVar(&c.NATSListen, "nats-listen", "127.0.0.1:4222", "embedded NATS client listener (off: none)")
	fs.StringVar(&c.NATSMonitorListen, "nats-monitor-listen", "127.0.0.1:8222", "embedded NATS monitoring listener (off: none)")
	fs.BoolVar(&c.NATSInProcess, "nats-in-process", true, "connect the pod to its embedded server in-process (false: over the server's loopback client listener, like any client)")
	fs.StringVar(&c.NATSURL, "nats-url", "", "comma-separated URLs of an existing NATS cluster (no embedded server)")
	fs.StringVar(&c.NATSCreds, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&c.NATSNkey, "nats-nkey", "", "NATS nkey seed file")
	fs.StringVar(&c.NATSUser, "nats-user", "", "NATS user")
	fs.StringVar(&c.NATSPassword, "nats-password", "", "NATS password")
	fs.StringVar(&c.NATSTLSCA, "nats-tls-ca", "", "CA file to verify NATS servers")
	fs.StringVar(&c.NATSTLSCert, "nats-tls-cert", "", "client certificate for NATS")
	fs.StringVar(&c.NATSTLSKey, "nats-tls-key", "", "client key for NATS")
	fs.IntVar(&c.Replicas, "replicas", 1, "replicas of every stream and KV bucket this pod creates")
	fs.StringVar(&c.Durability, "durability", "fast", "embedded store durability: fast (fsync every 2 min) or strict (fsync every write)")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:8400", "admin listener: /healthz, /readyz, /metrics, /api/v1, dashboard (off: none)")
	fs.StringVar(&c.AdminToken, "admin-token", "", "bearer token for the admin API (required when the admin listener is not on loopback)")
	fs.StringVar(&c.SubjectPrefix, "subject-prefix", "", "prefix of every NATS subject and asset name (to share one NATS account)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 10*time.Second, "how long in-flight commands may take to finish on shutdown")
	fs.DurationVar(&c.StartupTimeout, "startup-timeout", 0, "give up start-up if NATS is not usable within this time (0: wait forever)")
	fs.IntVar(&c.MaxMessage, "max-message", 1<<20, "maximum message size in bytes for every protocol")
	fs.IntVar(&c.ZMQMaxMessage, "zmq-max-message", 1<<20, "maximum ZeroMQ message size in bytes")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	c.Listen = map[string]*string{}
	for _, a := range adapters {
		for _, l := range a.Listeners() {
			c.Listen[l.Name] = fs.String(l.Flag, l.Default, l.Usage+" (off: disabled)")
		}
		a.Flags(fs)
	}
}

// EnvName is the environment variable of a flag: JETBRIDGE_ + upper case with '-' → '_'.
func EnvName(flag string) string {
	return "JETBRIDGE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// ApplyEnvAndFile fills every flag that was not given on the command line from its environment
// variable, else from the YAML file (keys are flag names; nested maps are joined with '-', so
// `tracker: {listen: ":1"}` sets tracker-listen). Precedence: flag > env > file > default.
func ApplyEnvAndFile(fs *pflag.FlagSet, file string) error {
	fileVals := map[string]string{}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config %s: %w", file, err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(data, &m); err != nil {
			return fmt.Errorf("config %s: %w", file, err)
		}
		flatten("", m, fileVals)
		var unknown []string
		for k := range fileVals {
			if fs.Lookup(k) == nil {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return fmt.Errorf("config %s: unknown keys %s", file, strings.Join(unknown, ", "))
		}
	}
	var errs []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || f.Name == "help" {
			return
		}
		v, ok := os.LookupEnv(EnvName(f.Name))
		src := EnvName(f.Name)
		if !ok {
			v, ok = fileVals[f.Name]
			src = file + ": " + f.Name
		}
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", src, err))
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("configuration: %s", strings.Join(errs, "; "))
	}
	return nil
}

func flatten(prefix string, m map[string]any, out map[string]string) {
	for k, v := range m {
		key := k
		if prefix != "" {
			key = prefix + "-" + k
		}
		switch t := v.(type) {
		case map[string]any:
			flatten(key, t, out)
		case []any:
			parts := make([]string, len(t))
			for i, p := range t {
				parts[i] = fmt.Sprint(p)
			}
			out[key] = strings.Join(parts, ",")
		case nil:
			out[key] = ""
		default:
			out[key] = fmt.Sprint(t)
		}
	}
}
