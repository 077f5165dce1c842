package tokenreview

import "github.com/go-logr/logr"

// maxClientVerbosity is the highest level the review client logs at: client-go logs request and
// response bodies from level 8 on, and a TokenReview's body is the token. Whatever -v or --vmodule
// say, the reviews' logger drops those levels.
const maxClientVerbosity = 7

// capVerbosity returns logger with every level above max disabled.
func capVerbosity(logger logr.Logger, max int) logr.Logger {
	sink := logger.GetSink()
	if sink == nil {
		return logger
	}
	// One more frame (ours) between the caller and the sink: klog finds the caller's file, which
	// --vmodule matches, by depth.
	if cd, ok := sink.(logr.CallDepthLogSink); ok {
		sink = cd.WithCallDepth(1)
	}
	return logr.New(&cappedSink{sink: sink, max: max})
}

type cappedSink struct {
	sink logr.LogSink
	max  int
}

// Init does nothing: the wrapped sink was initialized by its own logger, and WithCallDepth(1)
// accounts for this frame.
func (c *cappedSink) Init(logr.RuntimeInfo) {}

func (c *cappedSink) Enabled(level int) bool { return level <= c.max && c.sink.Enabled(level) }

func (c *cappedSink) Info(level int, msg string, kv ...any) {
	if level <= c.max {
		c.sink.Info(level, msg, kv...)
	}
}

func (c *cappedSink) Error(err error, msg string, kv ...any) { c.sink.Error(err, msg, kv...) }

func (c *cappedSink) WithValues(kv ...any) logr.LogSink {
	return &cappedSink{sink: c.sink.WithValues(kv...), max: c.max}
}

func (c *cappedSink) WithName(name string) logr.LogSink {
	return &cappedSink{sink: c.sink.WithName(name), max: c.max}
}

func (c *cappedSink) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := c.sink.(logr.CallDepthLogSink); ok {
		return &cappedSink{sink: cd.WithCallDepth(depth), max: c.max}
	}
	return c
}
