package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func init() { protocolCommands = append(protocolCommands, eventmqCommand) }

// eventmqCommand is `jetbridge eventmq …`: the EventMQ broker's queues, workers, schedules and jobs.
func eventmqCommand(api *adminClient) *cobra.Command {
	cmd := &cobra.Command{Use: "eventmq", Short: "EventMQ broker: queues, workers, schedules, jobs"}
	var asJSON bool
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	get := func(c *cobra.Command, path string, table func(raw json.RawMessage) error) error {
		var raw json.RawMessage
		if err := api.do(c.Context(), "GET", path, nil, &raw); err != nil {
			return err
		}
		if asJSON {
			_, err := fmt.Fprintln(c.OutOrStdout(), string(raw))
			return err
		}
		return table(raw)
	}
	cmd.AddCommand(&cobra.Command{
		Use: "queues", Short: "list queues (waiting, in flight, workers, counters)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return get(c, "/api/v1/eventmq/queues", func(raw json.RawMessage) error {
				var out struct {
					Queues []struct {
						Name                                  string
						Waiting                               uint64
						Inflight, Workers                     int
						Slots                                 int   `json:"available_slots"`
						Dispatched, Done, Failed, Redelivered int64 // counters of live pods
					}
				}
				if err := json.Unmarshal(raw, &out); err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "QUEUE\tWAITING\tIN FLIGHT\tWORKERS\tFREE SLOTS\tDONE\tFAILED\tREDELIVERED")
				for _, q := range out.Queues {
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", q.Name, q.Waiting, q.Inflight, q.Workers, q.Slots, q.Done, q.Failed, q.Redelivered)
				}
				return tw.Flush()
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "workers", Short: "list connected job managers and schedulers (all pods)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return get(c, "/api/v1/eventmq/workers", func(raw json.RawMessage) error {
				var out struct {
					Workers []struct {
						ID, Pod   string
						Queues    [][2]any
						Slots     int `json:"available_slots"`
						Inflight  int
						Processed int64
					}
					Schedulers []struct{ ID, Pod string }
				}
				if err := json.Unmarshal(raw, &out); err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TYPE\tID\tPOD\tQUEUES\tFREE SLOTS\tIN FLIGHT\tPROCESSED")
				for _, w := range out.Workers {
					qs, _ := json.Marshal(w.Queues)
					fmt.Fprintf(tw, "worker\t%s\t%s\t%s\t%d\t%d\t%d\n", w.ID, w.Pod, qs, w.Slots, w.Inflight, w.Processed)
				}
				for _, s := range out.Schedulers {
					fmt.Fprintf(tw, "scheduler\t%s\t%s\t-\t-\t-\t-\n", s.ID, s.Pod)
				}
				return tw.Flush()
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "schedules", Short: "list schedules", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return get(c, "/api/v1/eventmq/schedules", func(raw json.RawMessage) error {
				var out struct {
					Schedules []struct {
						Hash, Queue, Cron string
						Interval          int
						RunCount          int       `json:"run_count"`
						NextRun           time.Time `json:"next_run"`
						Runs              int64
					}
				}
				if err := json.Unmarshal(raw, &out); err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "HASH\tQUEUE\tEVERY\tRUNS LEFT\tRUNS\tNEXT RUN")
				for _, s := range out.Schedules {
					every := s.Cron
					if s.Interval >= 0 {
						every = (time.Duration(s.Interval) * time.Second).String()
					}
					left := fmt.Sprint(s.RunCount)
					if s.RunCount < 0 {
						left = "∞"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", s.Hash, s.Queue, every, left, s.Runs, s.NextRun.Format(time.RFC3339))
				}
				return tw.Flush()
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "job MSGID", Short: "show a job's state and result", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return get(c, "/api/v1/eventmq/jobs/"+url.PathEscape(args[0]), func(raw json.RawMessage) error {
				_, err := fmt.Fprintln(c.OutOrStdout(), string(raw))
				return err
			})
		},
	})
	return cmd
}
