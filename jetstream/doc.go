// Package jetstream holds everything in jetbridge that talks to NATS: the embedded server, the
// connection, declarative provisioning of streams, consumers and KV buckets, subject and asset
// names, and the primitives the protocol adapters share (publish with de-dup, pull consumers with
// leases, dead-lettering, KV records with CAS, request-reply and core pub-sub).
//
// Adapters never import nats.go; they call this package. Stream, consumer and bucket names passed
// to this package are logical names (e.g. "TRACKER_ITEMS"); the Client maps them onto the real
// names, honouring the subject prefix. Subjects are always full subjects, built with
// (*Client).Subject so that the prefix is applied in exactly one place.
package jetstream
