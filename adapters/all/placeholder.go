package all

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

// placeholderAdapter holds the listeners of a protocol whose adapter is not built yet: it binds
// them (so flags, "off" and start-up lines work) and closes every connection it accepts.
type placeholderAdapter struct {
	name  string
	specs []bridge.ListenerSpec
	wg    sync.WaitGroup
	lns   []net.Listener
}

func placeholder(name string, specs ...bridge.ListenerSpec) bridge.Adapter {
	return &placeholderAdapter{name: name, specs: specs}
}

func (p *placeholderAdapter) Name() string                            { return p.name }
func (p *placeholderAdapter) Listeners() []bridge.ListenerSpec        { return p.specs }
func (p *placeholderAdapter) Flags(*pflag.FlagSet)                    {}
func (p *placeholderAdapter) Assets(jetstream.Names) jetstream.Assets { return jetstream.Assets{} }

func (p *placeholderAdapter) Start(_ context.Context, env *bridge.Env) error {
	for _, ln := range env.Listeners {
		p.lns = append(p.lns, ln)
		p.wg.Add(1)
		go func(ln net.Listener) {
			defer p.wg.Done()
			warned := false
			for {
				c, err := ln.Accept()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						env.Log.Warn("accept", "err", err)
					}
					return
				}
				if !warned {
					env.Log.Warn("protocol not implemented yet: closing connections", "listener", ln.Addr().String())
					warned = true
				}
				c.Close()
			}
		}(ln)
	}
	return nil
}

func (p *placeholderAdapter) Drain(context.Context) error { return nil }

func (p *placeholderAdapter) Stop() error {
	for _, ln := range p.lns {
		ln.Close()
	}
	p.wg.Wait()
	return nil
}
