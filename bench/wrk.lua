-- wrk script for bench/load.py. Configured through the environment:
--   BENCH_METHOD   GET | POST ...
--   BENCH_PATH     request path; "{id}" is replaced by a random line of BENCH_IDS, "{n}" as
--                  in the body
--   BENCH_IDS      file with one id per line (optional)
--   BENCH_HEADERS  "Name: value" lines (optional); "{n}" in a value as in the body
--   BENCH_BODY     request body; "{n}" is replaced by a unique token per request (optional)
--   BENCH_RUN      a run id, part of every "{n}" (unique names across runs)
-- done() prints one line "BENCH_RESULT {json}" with counts and latency percentiles (µs).

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local ids_file = os.getenv("BENCH_IDS") or ""
local header_lines = os.getenv("BENCH_HEADERS") or ""
local body_template = os.getenv("BENCH_BODY")
local run_id = os.getenv("BENCH_RUN") or "0"
if body_template == "" then body_template = nil end

local thread_no = 0
local ids = {}
local n_ids = 0
local counter = 0
local my_thread = 0
local dynamic = false
local dynamic_headers = {}
local has_dynamic_headers = false
local static_request = nil

function setup(thread)
  thread_no = thread_no + 1
  thread:set("my_thread", thread_no)
end

function init(args)
  for line in string.gmatch(header_lines, "[^\n]+") do
    local name, value = string.match(line, "^([^:]+):%s*(.*)$")
    if name and string.find(value, "{n}", 1, true) then
      dynamic_headers[name] = value
      has_dynamic_headers = true
    elseif name then
      wrk.headers[name] = value
    end
  end
  if body_template then wrk.headers["Content-Type"] = "application/json" end
  if ids_file ~= "" then
    for line in io.lines(ids_file) do
      if #line > 0 then
        n_ids = n_ids + 1
        ids[n_ids] = line
      end
    end
  end
  math.randomseed(os.time() * 1000 + my_thread)
  dynamic = (n_ids > 0 and string.find(path, "{id}", 1, true) ~= nil)
      or (body_template ~= nil and string.find(body_template, "{n}", 1, true) ~= nil)
      or string.find(path, "{n}", 1, true) ~= nil
      or has_dynamic_headers
  if not dynamic then
    static_request = wrk.format(method, path, nil, body_template)
  end
end

function request()
  if not dynamic then return static_request end
  local p = path
  if n_ids > 0 then
    p = string.gsub(path, "{id}", ids[math.random(n_ids)], 1)
  end
  counter = counter + 1
  local token = run_id .. "-" .. my_thread .. "-" .. counter
  p = string.gsub(p, "{n}", token)
  local b = body_template
  if b then
    b = string.gsub(b, "{n}", token)
  end
  local h = nil
  if has_dynamic_headers then
    h = {}  -- wrk.format takes this table instead of wrk.headers, not merged with it
    for name, value in pairs(wrk.headers) do h[name] = value end
    for name, value in pairs(dynamic_headers) do
      h[name] = string.gsub(value, "{n}", token)
    end
  end
  return wrk.format(method, p, h, b)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
