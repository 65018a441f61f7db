package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func init() { protocolCommands = append(protocolCommands, trackerCommand) }

// trackerCommand is `jetbridge tracker …`: pipelines, queueing and the state of the queues.
func trackerCommand(api *adminClient) *cobra.Command {
	cmd := &cobra.Command{Use: "tracker", Short: "Tracker protocol: pipelines, items and queues"}
	cmd.AddCommand(trackerPipelineCommand(api), trackerQueueCommand(api), trackerStatusCommand(api),
		trackerItemCommand(api), trackerItemAction(api, "requeue", "put an item back in the queue (a claim is revoked)"),
		trackerItemAction(api, "abandon", "give up on an item: status error, dead-lettered (a claim is revoked)"),
		trackerLimboCommand(api), trackerDripfeedCommand(api), trackerTypeCommand(api))
	return cmd
}

func trackerPipelineCommand(api *adminClient) *cobra.Command {
	cmd := &cobra.Command{Use: "pipeline", Short: "pipelines (the Basic-auth users of the WebSocket)"}
	var budget, perMinute int
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "register a pipeline and print its secret (shown only once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var out struct {
				Name   string `json:"name"`
				Secret string `json:"secret"`
			}
			in := map[string]any{"name": args[0], "budget": budget, "claims_per_minute": perMinute}
			if err := api.do(c.Context(), "POST", "/api/v1/tracker/pipelines", in, &out); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "pipeline %s\nsecret   %s\n(use TRACKER_URL=wss://%s:%s@HOST:8897/; the secret is not shown again)\n",
				out.Name, out.Secret, url.PathEscape(out.Name), url.PathEscape(out.Secret))
			return nil
		},
	}
	add.Flags().IntVar(&budget, "budget", 0, "maximum open claims of the pipeline (0 = no cap)")
	add.Flags().IntVar(&perMinute, "claims-per-minute", 0, "claim rate limit per pod (0 = none)")
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "delete a pipeline (its connections are refused from now on)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return api.do(c.Context(), "DELETE", "/api/v1/tracker/pipelines/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "list pipelines with their limits, open claims and connections on the answering pod",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var out []struct {
				Name            string  `json:"name"`
				Created         float64 `json:"created"`
				Budget          int     `json:"budget"`
				ClaimsPerMinute int     `json:"claims_per_minute"`
				OpenClaims      int     `json:"open_claims"`
				Connections     int     `json:"connections"`
			}
			if err := api.do(c.Context(), "GET", "/api/v1/tracker/pipelines", nil, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED\tBUDGET\tCLAIMS/MIN\tOPEN CLAIMS\tCONNECTIONS")
			for _, p := range out {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", p.Name, epochString(p.Created), p.Budget, p.ClaimsPerMinute, p.OpenClaims, p.Connections)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON")
	var setBudget, setRate int
	limits := &cobra.Command{
		Use:   "limits NAME",
		Short: "change a pipeline's claim budget and rate limit",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			in := map[string]any{}
			if c.Flags().Changed("budget") {
				in["budget"] = setBudget
			}
			if c.Flags().Changed("claims-per-minute") {
				in["claims_per_minute"] = setRate
			}
			if len(in) == 0 {
				return errors.New("nothing to change: give --budget and/or --claims-per-minute")
			}
			var out json.RawMessage
			if err := api.do(c.Context(), "PATCH", "/api/v1/tracker/pipelines/"+url.PathEscape(args[0]), in, &out); err != nil {
				return err
			}
			return printJSON(c, out)
		},
	}
	limits.Flags().IntVar(&setBudget, "budget", 0, "maximum open claims (0 = no cap)")
	limits.Flags().IntVar(&setRate, "claims-per-minute", 0, "claim rate limit per pod (0 = none)")
	cmd.AddCommand(add, rm, ls, limits)
	return cmd
}

func trackerQueueCommand(api *adminClient) *cobra.Command {
	var ptype, runOn, queuedBy, stash, metadata, explanation string
	var priority int
	cmd := &cobra.Command{
		Use:   "queue --pipeline-type T [flags] URL...",
		Short: "queue items (URLs as arguments, or one per line on stdin when none are given or the argument is -)",
		RunE: func(c *cobra.Command, args []string) error {
			if ptype == "" {
				return errors.New("--pipeline-type is required")
			}
			urls := args
			if len(args) == 0 || (len(args) == 1 && args[0] == "-") {
				var err error
				if urls, err = readLines(c.InOrStdin()); err != nil {
					return err
				}
			}
			if len(urls) == 0 {
				return errors.New("no URLs given")
			}
			var md json.RawMessage
			if metadata != "" {
				if !json.Valid([]byte(metadata)) {
					return errors.New("--metadata must be a JSON object")
				}
				md = json.RawMessage(metadata)
			}
			if queuedBy == "" {
				queuedBy = "cli"
			}
			total := 0
			for start := 0; start < len(urls); start += 1000 {
				end := min(start+1000, len(urls))
				items := make([]map[string]any, 0, end-start)
				for _, u := range urls[start:end] {
					it := map[string]any{"item": u, "pipeline_type": ptype, "priority": priority, "run_on": runOn, "queued_by": queuedBy}
					if md != nil {
						it["metadata"] = md
					}
					if stash != "" {
						it["stash"] = stash
					}
					if explanation != "" {
						it["explanation"] = explanation
					}
					items = append(items, it)
				}
				var out struct {
					IDs []string `json:"ids"`
				}
				if err := api.do(c.Context(), "POST", "/api/v1/tracker/items", map[string]any{"items": items}, &out); err != nil {
					return fmt.Errorf("%w (%d items queued before)", err, total)
				}
				for i, id := range out.IDs {
					fmt.Fprintf(c.OutOrStdout(), "%s\t%s\n", id, urls[start+i])
				}
				total += len(out.IDs)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ptype, "pipeline-type", "", "pipeline type, e.g. brozzler (required)")
	f.IntVar(&priority, "priority", 0, "priority (lower is claimed first)")
	f.StringVar(&runOn, "run-on", "", "only this pipeline may claim the items")
	f.StringVar(&queuedBy, "queued-by", "", "who queued the items (default cli)")
	f.StringVar(&stash, "stash", "", "put the items in this stash (drip-fed with `jetbridge tracker dripfeed`)")
	f.StringVar(&metadata, "metadata", "", `item metadata as a JSON object, e.g. '{"ua":"$default","custom_js":null}'`)
	f.StringVar(&explanation, "explanation", "", "why the items are queued")
	return cmd
}

func readLines(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s != "" && !strings.HasPrefix(s, "#") {
			out = append(out, s)
		}
	}
	return out, sc.Err()
}

func trackerStatusCommand(api *adminClient) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "items per pipeline type and status",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var out struct {
				PipelineTypes map[string]map[string]int `json:"pipeline_types"`
			}
			if err := api.do(c.Context(), "GET", "/api/v1/tracker/queues", nil, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, out)
			}
			types := make([]string, 0, len(out.PipelineTypes))
			for t := range out.PipelineTypes {
				types = append(types, t)
			}
			sort.Strings(types)
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PIPELINE TYPE\tTODO\tCLAIMED\tDONE\tERROR\tSTASHED")
			for _, t := range types {
				m := out.PipelineTypes[t]
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", t, m["todo"], m["claimed"], m["done"], m["error"], m["stashed"])
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON")
	return cmd
}

func trackerItemCommand(api *adminClient) *cobra.Command {
	return &cobra.Command{
		Use:   "item ID",
		Short: "show an item's record (status, attempts, claim)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var out json.RawMessage
			if err := api.do(c.Context(), "GET", "/api/v1/tracker/items/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return err
			}
			return printJSON(c, out)
		},
	}
}

func trackerItemAction(api *adminClient, action, short string) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   action + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var out json.RawMessage
			if err := api.do(c.Context(), "POST", "/api/v1/tracker/items/"+url.PathEscape(args[0])+"/"+action,
				map[string]any{"reason": reason}, &out); err != nil {
				return err
			}
			return printJSON(c, out)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the item's admin log)")
	return cmd
}

func trackerLimboCommand(api *adminClient) *cobra.Command {
	var older time.Duration
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "limbo",
		Short: "claims older than --older-than",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var out []struct {
				ID           string  `json:"id"`
				Pipeline     string  `json:"pipeline"`
				PipelineType string  `json:"pipeline_type"`
				Attempt      int     `json:"attempt"`
				ClaimedAt    float64 `json:"claimed_at"`
				LeaseUntil   float64 `json:"lease_until"`
			}
			if err := api.do(c.Context(), "GET", "/api/v1/tracker/limbo?older_than="+url.QueryEscape(older.String()), nil, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tPIPELINE\tTYPE\tATTEMPT\tCLAIMED\tLEASE UNTIL")
			for _, l := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", l.ID, l.Pipeline, l.PipelineType, l.Attempt, epochString(l.ClaimedAt), epochString(l.LeaseUntil))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().DurationVar(&older, "older-than", 24*time.Hour, "minimum claim age")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON")
	return cmd
}

func trackerDripfeedCommand(api *adminClient) *cobra.Command {
	return &cobra.Command{
		Use:   "dripfeed STASH CONCURRENCY",
		Short: "release a stash's items into the queue, CONCURRENCY at a time (0 pauses)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			var n int
			if _, err := fmt.Sscanf(args[1], "%d", &n); err != nil || n < 0 {
				return fmt.Errorf("concurrency must be a number >= 0, not %q", args[1])
			}
			var out json.RawMessage
			if err := api.do(c.Context(), "PUT", "/api/v1/tracker/stashes/"+url.PathEscape(args[0]), map[string]any{"concurrency": n}, &out); err != nil {
				return err
			}
			return printJSON(c, out)
		},
	}
}

func trackerTypeCommand(api *adminClient) *cobra.Command {
	var lease time.Duration
	var maxTries int
	cmd := &cobra.Command{
		Use:   "type NAME",
		Short: "set a pipeline type's claim lease and max tries",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			in := map[string]any{}
			if lease > 0 {
				in["lease"] = lease.String()
			}
			if maxTries > 0 {
				in["max_tries"] = maxTries
			}
			var out json.RawMessage
			if err := api.do(c.Context(), "PUT", "/api/v1/tracker/pipeline-types/"+url.PathEscape(args[0]), in, &out); err != nil {
				return err
			}
			return printJSON(c, out)
		},
	}
	cmd.Flags().DurationVar(&lease, "lease", 0, "claim lease, renewed by System:ping (default: the pod's --tracker-lease)")
	cmd.Flags().IntVar(&maxTries, "max-tries", 0, "attempts before an item becomes error (default: the pod's --tracker-max-tries)")
	return cmd
}

func epochString(f float64) string {
	if f == 0 {
		return "-"
	}
	return time.Unix(0, int64(f*1e9)).UTC().Format(time.RFC3339)
}
