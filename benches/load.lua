-- wrk script for benches/load.sh. Arguments after `--`:
--   hook FILE   POST each line of FILE (an EMQX authn JSON body) in turn to the URL; counts
--               answers that are not {"result":"allow"}
--   healthz     GET the URL; counts answers that are not 200
-- done() prints one line: requests/s, p50 and p99 latency (µs), and the count of bad answers.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  bad = 0
  bodies = {}
  if mode == "hook" then
    for line in io.lines(args[2]) do
      table.insert(bodies, line)
    end
    next_body = 0
    headers = { ["Content-Type"] = "application/json" }
  end
end

function request()
  if mode == "hook" then
    next_body = next_body % #bodies + 1
    return wrk.format("POST", nil, headers, bodies[next_body])
  end
  return wrk.format("GET")
end

function response(status, headers, body)
  if status ~= 200 or (mode == "hook" and not string.find(body, '"result":"allow"', 1, true)) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total_bad = 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + thread:get("bad")
  end
  local seconds = summary.duration / 1e6
  io.write(string.format("RESULT requests/s=%.0f p50_us=%d p99_us=%d errors=%d bad=%d\n",
    summary.requests / seconds, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
      + summary.errors.timeout, total_bad))
end
