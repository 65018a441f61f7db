package gilmour

// glob.go: Gilmour's slot wildcards (a Redis glob where '*' matches any run of characters,
// dots included) mapped onto the narrowest NATS subject filter; the rest is filtered here.

import "strings"

// IsWildcard reports whether a topic is a glob.
func IsWildcard(topic string) bool { return strings.Contains(topic, "*") }

// GlobFilter returns the topic's NATS filter (without the "gilmour.slot." part): the literal
// tokens before the first token that holds a '*', followed by ">" — or the topic itself when it
// is no glob. exact reports that every message under the filter matches (no glob check needed).
func GlobFilter(topic string) (filter string, exact bool) {
	if !IsWildcard(topic) {
		return topic, true
	}
	toks := strings.Split(topic, ".")
	var lit []string
	for _, t := range toks {
		if strings.Contains(t, "*") {
			break
		}
		lit = append(lit, t)
	}
	lit = append(lit, ">")
	// "a.*" (a whole trailing token of just '*') is exactly "a.>": '*' must match at least one
	// character for the subject to be valid.
	exact = len(lit) == len(toks) && toks[len(toks)-1] == "*"
	return strings.Join(lit, "."), exact
}

// GlobMatch reports whether topic matches the glob pattern ('*' = any run of characters,
// including none and including dots; every other character is literal).
func GlobMatch(pattern, topic string) bool {
	// iterative matcher with backtracking to the last star
	p, t := 0, 0
	star, mark := -1, 0
	for t < len(topic) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, t
			p++
		case p < len(pattern) && pattern[p] == topic[t]:
			p++
			t++
		case star >= 0:
			p = star + 1
			mark++
			t = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
