package eventmq

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// cronSpec is a parsed cron expression as croniter reads it: "min hour dom month dow" with an
// optional sixth field for seconds, lists, ranges, steps, month and weekday names, and the
// @yearly/@monthly/@weekly/@daily/@hourly shortcuts. Times are UTC. When both day-of-month and
// day-of-week are restricted a day matching either one fires (croniter's day_or).
type cronSpec struct {
	sec, min, hour, dom, month, dow uint64 // bit sets
	domStar, dowStar                bool
}

var cronShortcuts = map[string]string{
	"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
	"@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}

var monthNames = map[string]int{"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}
var dowNames = map[string]int{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

func parseCron(expr string) (*cronSpec, error) {
	expr = strings.TrimSpace(expr)
	if s, ok := cronShortcuts[strings.ToLower(expr)]; ok {
		expr = s
	}
	f := strings.Fields(expr)
	if len(f) != 5 && len(f) != 6 {
		return nil, fmt.Errorf("cron %q: want 5 or 6 fields: %w", expr, ErrField)
	}
	c := &cronSpec{}
	var err error
	if c.min, _, err = cronField(f[0], 0, 59, nil); err != nil {
		return nil, fmt.Errorf("cron %q minute: %w", expr, err)
	}
	if c.hour, _, err = cronField(f[1], 0, 23, nil); err != nil {
		return nil, fmt.Errorf("cron %q hour: %w", expr, err)
	}
	if c.dom, c.domStar, err = cronField(f[2], 1, 31, nil); err != nil {
		return nil, fmt.Errorf("cron %q day of month: %w", expr, err)
	}
	if c.month, _, err = cronField(f[3], 1, 12, monthNames); err != nil {
		return nil, fmt.Errorf("cron %q month: %w", expr, err)
	}
	if c.dow, c.dowStar, err = cronField(f[4], 0, 7, dowNames); err != nil {
		return nil, fmt.Errorf("cron %q day of week: %w", expr, err)
	}
	if c.dow&(1<<7) != 0 { // 7 is Sunday too
		c.dow |= 1
	}
	c.sec = 1
	if len(f) == 6 {
		if c.sec, _, err = cronField(f[5], 0, 59, nil); err != nil {
			return nil, fmt.Errorf("cron %q second: %w", expr, err)
		}
	}
	return c, nil
}

func cronField(s string, lo, hi int, names map[string]int) (bits uint64, star bool, err error) {
	num := func(v string) (int, error) {
		if n, ok := names[strings.ToLower(v)]; ok {
			return n, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return 0, fmt.Errorf("value %q out of %d-%d: %w", v, lo, hi, ErrField)
		}
		return n, nil
	}
	star = s == "*" || s == "?"
	for _, part := range strings.Split(s, ",") {
		rng, stepS, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			step, err = strconv.Atoi(stepS)
			if err != nil || step < 1 || step > hi+1 {
				return 0, false, fmt.Errorf("step %q: %w", stepS, ErrField)
			}
		}
		a, b := lo, hi
		switch {
		case rng == "*" || rng == "?":
		case strings.Contains(rng, "-"):
			x, y, _ := strings.Cut(rng, "-")
			if a, err = num(x); err != nil {
				return 0, false, err
			}
			if b, err = num(y); err != nil {
				return 0, false, err
			}
			if a > b {
				return 0, false, fmt.Errorf("range %q: %w", rng, ErrField)
			}
		default:
			if a, err = num(rng); err != nil {
				return 0, false, err
			}
			b = a
			if hasStep {
				b = hi
			}
		}
		for v := a; v <= b; v += step {
			bits |= 1 << uint(v)
		}
	}
	return bits, star, nil
}

func (c *cronSpec) dayMatches(t time.Time) bool {
	d := c.dom&(1<<uint(t.Day())) != 0
	w := c.dow&(1<<uint(t.Weekday())) != 0
	switch {
	case c.domStar && c.dowStar:
		return true
	case c.domStar:
		return w
	case c.dowStar:
		return d
	}
	return d || w
}

// Next returns the first matching time strictly after t (zero if none within 5 years).
func (c *cronSpec) Next(t time.Time) time.Time {
	t = t.UTC().Truncate(time.Second).Add(time.Second)
	end := t.AddDate(5, 0, 0)
	for t.Before(end) {
		if c.month&(1<<uint(t.Month())) == 0 {
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
			continue
		}
		if !c.dayMatches(t) {
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
			continue
		}
		if c.hour&(1<<uint(t.Hour())) == 0 {
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, time.UTC)
			continue
		}
		if c.min&(1<<uint(t.Minute())) == 0 {
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute()+1, 0, 0, time.UTC)
			continue
		}
		if c.sec&(1<<uint(t.Second())) == 0 {
			t = t.Add(time.Second)
			continue
		}
		return t
	}
	return time.Time{}
}
