package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/jetbridge/jetbridge/adapters/sink"
)

func init() { protocolCommands = append(protocolCommands, sinkCommand) }

// sinkCommand is `jetbridge sink …`: the Sink server's client registry, quarantine, policy and
// outbound events.
func sinkCommand(api *adminClient) *cobra.Command {
	cmd := &cobra.Command{Use: "sink", Short: "Sink protocol: client certificates, quarantine, version policy, outbound events"}
	client := &cobra.Command{Use: "client", Short: "registered Sink clients"}

	var certFile, id string
	add := &cobra.Command{
		Use:   "add --cert FILE --id ID",
		Short: "register a client certificate (PEM) under a client id",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pemBytes, err := os.ReadFile(certFile)
			if err != nil {
				return fmt.Errorf("read certificate: %w", err)
			}
			var rec sink.ClientRecord
			if err := api.do(c.Context(), "POST", "/api/v1/sink/clients", sink.AddClientRequest{ID: id, CertPEM: string(pemBytes)}, &rec); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "client %s registered (certificate sha256 %s, CN %q)\n", rec.ID, rec.Fingerprint, rec.CN)
			return nil
		},
	}
	add.Flags().StringVar(&certFile, "cert", "", "client certificate (PEM)")
	add.Flags().StringVar(&id, "id", "", "client id (1-64 characters of A-Z a-z 0-9 _ -)")
	_ = add.MarkFlagRequired("cert")
	_ = add.MarkFlagRequired("id")

	var asJSON bool
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "list clients with their connection, instance id, quarantine, freshness and outbound queue",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var out sink.ClientList
			if err := api.do(c.Context(), "GET", "/api/v1/sink/clients", nil, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, out)
			}
			fmt.Fprintf(c.OutOrStdout(), "server instance id %d\n", out.ServerInstanceID)
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tINSTANCE\tCONNECTED\tQUARANTINE\tFRESHNESS\tOUT WAITING\tOUT INFLIGHT")
			for _, ci := range out.Clients {
				inst := "-"
				if ci.InstanceID != nil {
					inst = fmt.Sprint(*ci.InstanceID)
				}
				conn := "-"
				if ci.Connected != nil {
					conn = ci.Connected.Pod + " since " + ci.Connected.Since.Format(time.RFC3339)
				}
				q := "-"
				if ci.Quarantine != nil {
					q = ci.Quarantine.Machine + " " + ci.Quarantine.Human
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", ci.ID, inst, conn, q, sinkFreshness(ci.Freshness),
					ci.OutboundWaiting, ci.OutboundInflight)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON")

	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "remove a client (its certificate is unknown again; a live connection is closed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := api.do(c.Context(), "DELETE", "/api/v1/sink/clients/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "client %s removed\n", args[0])
			return nil
		},
	}
	reset := &cobra.Command{
		Use:   "reset-instance ID",
		Short: "forget the client's instance id (a re-flashed device is then greeted as new)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := api.do(c.Context(), "DELETE", "/api/v1/sink/clients/"+url.PathEscape(args[0])+"/instance-id", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "client %s: instance id forgotten\n", args[0])
			return nil
		},
	}
	client.AddCommand(add, ls, rm, reset)

	var reason, machine string
	var lift bool
	quarantine := &cobra.Command{
		Use:   "quarantine ID --reason TEXT [--machine CODE] | quarantine ID --lift",
		Short: "quarantine a client (refused with code 13 and the messages at its next handshake) or lift it",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			path := "/api/v1/sink/clients/" + url.PathEscape(args[0]) + "/quarantine"
			if lift {
				if err := api.do(c.Context(), "DELETE", path, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "client %s: quarantine lifted\n", args[0])
				return nil
			}
			if reason == "" {
				return errors.New("--reason is required (or --lift)")
			}
			if err := api.do(c.Context(), "POST", path, sink.QuarantineRequest{Machine: machine, Human: reason}, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "client %s quarantined\n", args[0])
			return nil
		},
	}
	quarantine.Flags().StringVar(&reason, "reason", "", "human message sent to the device")
	quarantine.Flags().StringVar(&machine, "machine", "quarantined", "machine message sent to the device")
	quarantine.Flags().BoolVar(&lift, "lift", false, "lift the quarantine")

	var minVersion string
	policy := &cobra.Command{
		Use:   "policy [--min-app-version VERSION]",
		Short: "show or set the minimum application version (older clients get code 15)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var p sink.Policy
			if c.Flags().Changed("min-app-version") {
				if err := api.do(c.Context(), "PUT", "/api/v1/sink/policy", sink.Policy{MinApplicationVersion: minVersion}, &p); err != nil {
					return err
				}
			} else if err := api.do(c.Context(), "GET", "/api/v1/sink/policy", nil, &p); err != nil {
				return err
			}
			v := p.MinApplicationVersion
			if v == "" {
				v = "(none)"
			}
			fmt.Fprintf(c.OutOrStdout(), "minimum application version: %s\n", v)
			return nil
		},
	}
	policy.Flags().StringVar(&minVersion, "min-app-version", "", `minimum application version ("" removes it)`)

	var typ, schema, offset uint64
	var key, keyB64, data, dataFile string
	publish := &cobra.Command{
		Use:   "publish ID --type N [--key TEXT | --key-b64 B64] [--data TEXT | --data-file FILE] [--offset N]",
		Short: "queue an event for a client (delivered when it is connected; a missing offset is the next one)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			req := map[string]any{"event_type_id": typ, "schema_version": schema}
			switch {
			case keyB64 != "":
				req["key"] = keyB64
			default:
				req["key"] = base64.StdEncoding.EncodeToString([]byte(key))
			}
			payload := []byte(data)
			if dataFile != "" {
				b, err := os.ReadFile(dataFile)
				if err != nil {
					return fmt.Errorf("read data: %w", err)
				}
				payload = b
			}
			req["data"] = base64.StdEncoding.EncodeToString(payload)
			if c.Flags().Changed("offset") {
				req["offset"] = offset
			}
			var out sink.EventResponse
			if err := api.do(c.Context(), "POST", "/api/v1/sink/clients/"+url.PathEscape(args[0])+"/events", req, &out); err != nil {
				return err
			}
			dup := ""
			if out.Duplicate {
				dup = " (duplicate, not stored again)"
			}
			fmt.Fprintf(c.OutOrStdout(), "queued on %s #%d with offset %d%s\n", out.Subject, out.Seq, out.Offset, dup)
			return nil
		},
	}
	publish.Flags().Uint64Var(&typ, "type", 0, "event_type_id")
	publish.Flags().Uint64Var(&schema, "schema", 1, "schema_version")
	publish.Flags().StringVar(&key, "key", "", "key as text")
	publish.Flags().StringVar(&keyB64, "key-b64", "", "key as standard base64")
	publish.Flags().StringVar(&data, "data", "", "event data as text")
	publish.Flags().StringVar(&dataFile, "data-file", "", "event data from a file")
	publish.Flags().Uint64Var(&offset, "offset", 0, "offset (default: the next one for client, type and key)")
	_ = publish.MarkFlagRequired("type")

	cmd.AddCommand(client, quarantine, policy, publish)
	return cmd
}

func sinkFreshness(f map[string]uint64) string {
	if len(f) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "@" + time.Unix(int64(f[k]), 0).UTC().Format(time.RFC3339)
	}
	return strings.Join(parts, ",")
}
