package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func init() { protocolCommands = append(protocolCommands, zerotaskCommand) }

// zerotaskTask is a task as GET /api/v1/zerotask/tasks lists it.
type zerotaskTask struct {
	ID         string          `json:"id"`
	Method     string          `json:"method"`
	Status     int             `json:"status"`
	StatusName string          `json:"status_name"`
	NodeID     string          `json:"node_id"`
	Attempts   int             `json:"attempts"`
	Created    time.Time       `json:"created"`
	Result     json.RawMessage `json:"result"`
	Error      json.RawMessage `json:"error"`
}

// zerotaskNode is a node as GET /api/v1/zerotask/nodes lists it.
type zerotaskNode struct {
	ID        string    `json:"id"`
	Pod       string    `json:"pod"`
	Transport string    `json:"transport"`
	LastSeen  time.Time `json:"last_seen"`
	Alive     bool      `json:"alive"`
	Workers   int       `json:"workers"`
}

// zerotaskCommand is `jetbridge zerotask …`: the ZeroTask broker's admin commands.
func zerotaskCommand(api *adminClient) *cobra.Command {
	cmd := &cobra.Command{Use: "zerotask", Short: "ZeroTask task broker: tasks, nodes, JSON-RPC calls"}
	var asJSON bool
	var status string
	var limit int
	tasks := &cobra.Command{
		Use:   "tasks",
		Short: "list tasks (--status 1000|3000|5000|7000|9000 or queued|assigned|running|finished|failed)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			q := url.Values{}
			if status != "" {
				q.Set("status", status)
			}
			q.Set("limit", strconv.Itoa(limit))
			var out struct {
				Tasks     []zerotaskTask `json:"tasks"`
				Truncated bool           `json:"truncated"`
			}
			var raw json.RawMessage
			if err := api.do(c.Context(), "GET", "/api/v1/zerotask/tasks?"+q.Encode(), nil, &raw); err != nil {
				return err
			}
			if asJSON {
				_, err := fmt.Fprintln(c.OutOrStdout(), string(raw))
				return err
			}
			if err := json.Unmarshal(raw, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tMETHOD\tSTATUS\tNODE\tATTEMPTS\tCREATED")
			for _, t := range out.Tasks {
				node := t.NodeID
				if node == "" {
					node = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d %s\t%s\t%d\t%s\n", t.ID, t.Method, t.Status, t.StatusName, node, t.Attempts, t.Created.Format(time.RFC3339))
			}
			if out.Truncated {
				fmt.Fprintf(tw, "… more than %d (use --limit)\n", limit)
			}
			return tw.Flush()
		},
	}
	tasks.Flags().StringVar(&status, "status", "", "only tasks with this status")
	tasks.Flags().IntVar(&limit, "limit", 100, "at most this many tasks (1..10000)")
	tasks.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON")
	nodes := &cobra.Command{
		Use:   "nodes",
		Short: "list the nodes with their pod, transport and liveness",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var raw json.RawMessage
			if err := api.do(c.Context(), "GET", "/api/v1/zerotask/nodes", nil, &raw); err != nil {
				return err
			}
			if asJSON {
				_, err := fmt.Fprintln(c.OutOrStdout(), string(raw))
				return err
			}
			var out struct {
				Nodes []zerotaskNode `json:"nodes"`
			}
			if err := json.Unmarshal(raw, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tALIVE\tTRANSPORT\tPOD\tLAST SEEN")
			for _, n := range out.Nodes {
				pod := n.Pod
				if pod == "" {
					pod = "-"
				}
				fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\n", n.ID, n.Alive, n.Transport, pod, n.LastSeen.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	nodes.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON")
	call := &cobra.Command{
		Use:   "call METHOD [PARAMS-JSON]",
		Short: "call a broker method over HTTP, e.g. call client_task_status '[\"cid\", \"cid-tid\"]'",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			params := json.RawMessage("[]")
			if len(args) == 2 {
				if !json.Valid([]byte(args[1])) {
					return fmt.Errorf("params %q are not JSON", args[1])
				}
				params = json.RawMessage(args[1])
			}
			method := args[0]
			if !strings.Contains(method, ".") {
				method = "zerotask.broker." + method
			}
			in := map[string]any{"jsonrpc": "2.0", "method": method, "params": params, "id": "cli"}
			var out json.RawMessage
			if err := api.do(c.Context(), "POST", "/api/v1/zerotask/rpc", in, &out); err != nil {
				return err
			}
			_, err := fmt.Fprintln(c.OutOrStdout(), string(out))
			return err
		},
	}
	cmd.AddCommand(tasks, nodes, call)
	return cmd
}
