package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/jetbridge/jetbridge/adapters/gilmour"
)

func init() { protocolCommands = append(protocolCommands, gilmourCommand) }

// gilmourCommand is `jetbridge gilmour …`: the Gilmour proxy's admin commands.
func gilmourCommand(api *adminClient) *cobra.Command {
	cmd := &cobra.Command{Use: "gilmour", Short: "Gilmour HTTP proxy: registered nodes"}
	var asJSON bool
	nodes := &cobra.Command{
		Use:   "nodes",
		Short: "list the registered nodes with their status, slots, services and last health check",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var out gilmour.AdminNodes
			if err := api.do(c.Context(), "GET", "/api/v1/gilmour/nodes", nil, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDRESS\tSTATUS\tSERVICES\tSLOTS\tLAST CHECK\tCHECKED BY")
			for _, n := range out.Nodes {
				last := "-"
				if n.LastHealthCheck != nil {
					last = n.LastHealthCheck.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s:%d\t%s\t%s\t%s\t%s\t%s\n", n.ID, n.Host, n.Port, n.Status,
					subList(n.Services), subList(n.Slots), last, orDash(n.CheckedBy))
			}
			return tw.Flush()
		},
	}
	nodes.Flags().BoolVar(&asJSON, "json", false, "print the admin API's JSON")
	cmd.AddCommand(nodes)
	return cmd
}

func subList(subs []gilmour.Sub) string {
	if len(subs) == 0 {
		return "-"
	}
	parts := make([]string, len(subs))
	for i, s := range subs {
		parts[i] = s.Topic
		if s.Group != "" {
			parts[i] += "(" + s.Group + ")"
		}
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
