// Package eventmq is jetbridge's EventMQ eMQP/1.0 broker: the original router's frontend (clients
// and schedulers, --eventmq-frontend), backend (job managers, --eventmq-backend), administrative
// socket (--eventmq-admin) and publisher device (--eventmq-pub-in / --eventmq-pub-out), speaking
// the exact frames of the original code (spec §2.2) over the pure-Go ZMTP transport.
//
// Jobs. A REQUEST is stored on the work-queue stream EVENTMQ_JOBS, subject
// eventmq.jobs.<queue>.<msgid>, de-duplicated on its msgid, before the submission REPLY is sent. A
// queue no worker declared (KV EVENTMQ_QUEUES, shared by all pods) is rerouted to "default"; the
// frames reach the worker unchanged. Each READY is one free slot, and a pod asks JetStream
// (durable consumer per queue) for exactly as many jobs as its workers have free slots, so no
// job waits in a pod for a slot: the slots of workers serving one queue share one demand-driven
// puller (jetstream.SlotPuller); a worker of several queues pulls for each free slot from its
// queues by weight, highest first. A job is acknowledged when its worker is done with it: its
// result REPLY (reply-requested), else its next READY, which completes the worker's oldest job
// without reply-requested (--eventmq-exact-completion makes every completion name its job). While
// the worker lives the job's lease is renewed; when the worker dies (KBYE, heartbeat timeout,
// disconnect, send failure, admin DISCONNECT; a disconnection is handled after the messages the
// worker sent before it, so a REPLY followed by a close completes the job) its jobs go back to the
// queue at once, and when the pod dies their leases (--eventmq-lease) run out. A job has retry-count:N
// → N+1 attempts (else --eventmq-attempts): when its last attempt ends with its worker it is
// dead-lettered to dlq.eventmq.jobs.… with the reason at once, and a job delivered more often (its
// pod died) is dead-lettered when it is pulled. Results of jobs with reply-requested (and dead-letter notes) are stored and published on
// eventmq.results.<msgid> (stream EVENTMQ_RESULTS) and served by GET /api/v1/eventmq/jobs/{msgid}.
//
// Liveness. The broker sends HEARTBEAT right after the ACK to an INFORM (the JobManager starts its
// workers only then) and every --eventmq-heartbeat-interval to workers and schedulers; a worker or
// scheduler silent for --eventmq-heartbeat-timeout is dead.
//
// Schedules. SCHEDULE/UNSCHEDULE are honoured by jetbridge itself (not forwarded to a connected
// scheduler): KV EVENTMQ_SCHEDULES, keyed by the original scheduler's job hash. Each pod checks due
// schedules every --eventmq-schedule-tick; a run's job has a msgid derived from the schedule and
// the run time (JetStream keeps one copy) and only the pod whose compare-and-set on the revision
// wins moves the schedule on, so each run fires once across all pods. Without nohaste the first
// run is immediate; run_count:N counts every run (interval and cron). Cron: 5 fields, or 6 with
// seconds last (croniter), UTC.
//
// Admin. STATUS, ROUTER_SHOW_WORKERS and ROUTER_SHOW_SCHEDULERS answer with the original shapes,
// merged from the state every pod writes to KV EVENTMQ_PODS; DISCONNECT is ACKed and every pod
// sends KBYE to its workers and schedulers (the sockets stay open: pods are shared).
//
// PUBLISH. The publisher device publishes on core subject eventmq.pub.<topic>; every pod re-sends
// what arrives there as [topic, msg] on its PUB socket, so SUB sockets on every pod and NATS
// subscribers get it, and a NATS publish reaches SUB sockets.
//
// Weights: a worker's free slot takes from its queues highest weight first; the free slots of
// the workers of a pod that serve a single queue are pooled, and a job goes to the member with
// the highest weight that has a free slot (as the original router picks). Across pods, and
// between a pooled worker and a worker of several queues, JetStream serves whoever asked first.
// One client's REQUESTs and SCHEDULEs are stored in the order it sent them.
//
// Known limits: per-pod counters (done, failed, redelivered) in STATUS and the API are those of
// the live pods since they started.
package eventmq
