// Command jetbridge runs a jetbridge pod (serve, the default) and talks to a pod's admin API.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/jetbridge/jetbridge/adapters/all"
	"github.com/jetbridge/jetbridge/bridge"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "jetbridge:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	api := &adminClient{}
	root := &cobra.Command{
		Use:           "jetbridge",
		Short:         "jetbridge: five legacy broker protocols on NATS JetStream",
		Long:          "jetbridge serves the Tracker, Gilmour, Sink, ZeroTask and EventMQ protocols on top of NATS JetStream.\nWith no subcommand it runs `serve`.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       bridge.Version,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&api.baseURL, "admin-url", "http://127.0.0.1:8400", "admin API of the pod the CLI talks to")
	pf.StringVar(&api.token, "admin-token", "", "admin API bearer token (serve: required when the admin listener is not on loopback)")
	addServe(root, api, true)
	serve := &cobra.Command{Use: "serve", Short: "run a pod (the default)", Args: cobra.NoArgs}
	addServe(serve, api, false)
	root.AddCommand(serve, statusCommand(api))
	for _, pc := range protocolCommands {
		root.AddCommand(pc(api))
	}
	for _, c := range root.Commands() {
		if c.Name() == "serve" {
			continue
		}
		c.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
			return bridge.ApplyEnvAndFile(cmd.Flags(), "")
		}
	}
	return root
}

// addServe makes cmd run a pod with every adapter, with the pod's flags.
func addServe(cmd *cobra.Command, api *adminClient, isRoot bool) {
	var cfg bridge.Config
	var configFile string
	adapters := all.Adapters()
	fs := cmd.Flags()
	cfg.RegisterFlags(fs, adapters)
	fs.StringVar(&configFile, "config", "", "YAML file with flag names as keys (flag > env > file > default)")
	if isRoot {
		cmd.Args = cobra.NoArgs
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := bridge.ApplyEnvAndFile(cmd.Flags(), configFile); err != nil {
			return err
		}
		if cfg.AdminToken == "" {
			cfg.AdminToken = api.token
		}
		return serve(cmd, cfg, adapters)
	}
}

func newLogger(cfg bridge.Config) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", cfg.LogFormat)
}

func serve(cmd *cobra.Command, cfg bridge.Config, adapters []bridge.Adapter) error {
	log, err := newLogger(cfg)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pod := bridge.NewPod(cfg, adapters, log)
	if err := pod.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while waiting for NATS
		}
		return err
	}
	out := cmd.OutOrStdout()
	for _, l := range pod.Listeners() {
		if l.Address == "off" {
			fmt.Fprintf(out, "jetbridge: %-16s off (--%s)\n", l.Name, l.Flag)
			continue
		}
		fmt.Fprintf(out, "jetbridge: %-16s listening on %s\n", l.Name, l.Address)
	}
	if cfg.NATSURL != "" {
		fmt.Fprintf(out, "jetbridge: %-16s %s (external, replicas %d)\n", "nats", redactURL(cfg.NATSURL), cfg.Replicas)
	}
	fmt.Fprintf(out, "jetbridge: pod %s ready (version %s)\n", pod.ID(), bridge.Version)
	<-ctx.Done()
	stop()
	log.Info("shutting down", "drain_timeout", cfg.DrainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout+15*time.Second)
	defer cancel()
	if err := pod.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	log.Info("stopped")
	return nil
}

func redactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				parts[i] = u[:s+3] + "***@" + u[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}

func statusCommand(api *adminClient) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "show a pod's status (version, NATS, listeners, assets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st bridge.Status
			if err := api.do(cmd.Context(), "GET", "/api/v1/status", nil, &st); err != nil {
				var ae *apiError
				if errors.As(err, &ae) && ae.Status == 401 {
					return fmt.Errorf("%w (pass --admin-token or set JETBRIDGE_ADMIN_TOKEN)", err)
				}
				return err
			}
			return printJSON(cmd, st)
		},
	}
}
