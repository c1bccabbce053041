-- Shared by the scenario scripts: one machine-readable line after the run.
-- Latencies are in microseconds; status = responses with a status >= 400.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration,
      math.floor(latency:percentile(50)), math.floor(latency:percentile(99)),
      e.status, e.connect, e.read, e.write, e.timeout))
end
