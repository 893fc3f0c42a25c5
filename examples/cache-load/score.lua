-- wrk script for examples/cache-load/run.sh: POSTs /v1/score and counts
-- what came back. MODE=fixed sends one body (every request the same memo
-- key); MODE=unique makes every request a new portfolio (a miss each).
-- MODEL names the model. Prints status and cache-tier counts at the end.

local mode = os.getenv("MODE") or "fixed"
local model = os.getenv("MODEL") or "var-historical"
local threads = {}
local next_id = 0

-- Runs in the main Lua state; `thread:set` gives each thread's own state a
-- global `thread_id`, which keeps MODE=unique portfolios distinct across
-- threads.
function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
  table.insert(threads, thread)
end

local function body(q)
  return string.format(
    '{"model":"%s","portfolio":{"positions":[' ..
    '{"instrument":"SPX","quantity":%d},{"instrument":"TLT","quantity":-200},' ..
    '{"instrument":"AAPL","quantity":50},{"instrument":"GOLD","quantity":30},' ..
    '{"instrument":"EURUSD","quantity":10000}]}}', model, q)
end

function init(args)
  counter = 0
  ok, bad, l1, l2, computed = 0, 0, 0, 0, 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = body(10)
end

function request()
  if mode == "unique" then
    counter = counter + 1
    return wrk.format(nil, nil, nil, body(thread_id * 100000000 + counter))
  end
  return wrk.format()
end

function response(status, headers, resp)
  if status == 200 then
    ok = ok + 1
    if string.find(resp, '"cache_tier":"l1"', 1, true) then
      l1 = l1 + 1
    elseif string.find(resp, '"cache_tier":"l2"', 1, true) then
      l2 = l2 + 1
    else
      computed = computed + 1
    end
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local t = { ok = 0, bad = 0, l1 = 0, l2 = 0, computed = 0 }
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do
      t[k] = t[k] + (thread:get(k) or 0)
    end
  end
  io.write(string.format(
    "answers: %d ok, %d not ok; l1 %d, l2 %d, computed %d\n",
    t.ok, t.bad, t.l1, t.l2, t.computed))
end
