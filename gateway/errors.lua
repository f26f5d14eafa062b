-- errors.lua: the gateway's first HTTP filter. It records the API family of the original path and x-request-id,
-- and rewrites every error response (status >= 400) into its family's body:
-- service errors (google.rpc.Status JSON from convert_grpc_status, with ErrorInfo / Struct / BadRequest details;
-- protos/README.md "Errors"), ext_authz denials and Envoy's own local replies. Successful responses are never
-- buffered, so SSE streams through untouched.

local NS = "llmlab.gateway"     -- dynamic metadata namespace (also sent to ext_authz: the family)
-- Request limits, answered here in the family's shape. Envoy's own cap on all headers (render.py) is twice the
-- header limit, so that what ext_authz adds to an accepted request still fits (past it: 500 ext_authz_invalid).
local MAX_URL_BYTES = 8192      -- request path and query: 414 past it
local MAX_HEADER_BYTES = 16384  -- all request headers together: 431 past it
local ORDER = {}                -- key under which decoded objects keep their member order
local ARRAY = {}                -- metatable marking decoded arrays

---------------------------------------------------------------- JSON (small: error bodies only)
local byte, sub, find, fmt, concat = string.byte, string.sub, string.find, string.format, table.concat
local ESC = {['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t'}
local NULL = setmetatable({}, {__tostring = function() return "null" end})

local function utf8(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                     0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local function ws(s, i) return find(s, "[^ \t\r\n]", i) or #s + 1 end

local function dstring(s, i)               -- s[i] is the opening quote
  local out, j = {}, i + 1
  while true do
    local k = find(s, '["\\]', j)
    if not k then error("unterminated string") end
    out[#out + 1] = sub(s, j, k - 1)
    if byte(s, k) == 34 then return concat(out), k + 1 end
    local e = sub(s, k + 1, k + 1)
    if e == "u" then
      local cp = tonumber(sub(s, k + 2, k + 5), 16) or error("bad \\u escape")
      j = k + 6
      if cp >= 0xD800 and cp <= 0xDBFF and sub(s, j, j + 1) == "\\u" then
        cp = 0x10000 + (cp - 0xD800) * 0x400 + ((tonumber(sub(s, j + 2, j + 5), 16) or 0xDC00) - 0xDC00)
        j = j + 6
      end
      out[#out + 1] = utf8(cp)
    else
      out[#out + 1] = ESC[e] or error("bad escape")
      j = k + 2
    end
  end
end

local dvalue, explain
local function dobject(s, i)
  local t, keys = {}, {}
  t[ORDER] = keys
  i = ws(s, i + 1)
  if byte(s, i) == 125 then return t, i + 1 end
  while true do
    if byte(s, i) ~= 34 then error("expected key") end
    local k; k, i = dstring(s, i); i = ws(s, i)
    if byte(s, i) ~= 58 then error("expected :") end
    if t[k] == nil then keys[#keys + 1] = k end
    t[k], i = dvalue(s, i + 1); i = ws(s, i)
    local c = byte(s, i)
    if c == 125 then return t, i + 1 elseif c ~= 44 then error("expected , or }") end
    i = ws(s, i + 1)
  end
end

local function darray(s, i)
  local t = setmetatable({}, ARRAY)
  i = ws(s, i + 1)
  if byte(s, i) == 93 then return t, i + 1 end
  while true do
    t[#t + 1], i = dvalue(s, i); i = ws(s, i)
    local c = byte(s, i)
    if c == 93 then return t, i + 1 elseif c ~= 44 then error("expected , or ]") end
    i = i + 1
  end
end

function dvalue(s, i)
  i = ws(s, i)
  local c = byte(s, i)
  if c == 123 then return dobject(s, i)
  elseif c == 91 then return darray(s, i)
  elseif c == 34 then return dstring(s, i)
  elseif sub(s, i, i + 3) == "true" then return true, i + 4
  elseif sub(s, i, i + 4) == "false" then return false, i + 5
  elseif sub(s, i, i + 3) == "null" then return NULL, i + 4
  end
  local a, b = find(s, "^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if not a then error("bad value") end
  return tonumber(sub(s, a, b)) or error("bad number"), b + 1
end

local function decode(s)
  local v, i = dvalue(s, 1)
  if ws(s, i) <= #s then error("trailing data") end
  return v
end

local QUOTE = {['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function q(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(ch) return QUOTE[ch] or fmt("\\u%04x", byte(ch)) end) .. '"'
end

local encode
local function num(v)
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  if v == math.floor(v) and math.abs(v) < 1e15 then return fmt("%d", v) end
  local s = fmt("%.14g", v)
  return tonumber(s) == v and s or fmt("%.17g", v)
end
function encode(v)
  local t = type(v)
  if t == "string" then return q(v)
  elseif t == "number" then return num(v)
  elseif t == "boolean" then return v and "true" or "false"
  elseif v == nil or v == NULL then return "null"
  end
  local parts = {}
  if getmetatable(v) == ARRAY then
    for i = 1, #v do parts[i] = encode(v[i]) end
    return "[" .. concat(parts, ",") .. "]"
  end
  local keys = v[ORDER]
  if not keys then
    keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
  end
  for _, k in ipairs(keys) do parts[#parts + 1] = q(k) .. ":" .. encode(v[k]) end
  return "{" .. concat(parts, ",") .. "}"
end

---------------------------------------------------------------- error model
-- Names for lab/native `code` (research `error` is their lower case) when no ErrorInfo reason is given.
local CODE = {[400] = "VALIDATION_ERROR", [401] = "UNAUTHORIZED", [403] = "FORBIDDEN", [404] = "NOT_FOUND",
  [405] = "METHOD_NOT_ALLOWED", [408] = "REQUEST_TIMEOUT", [409] = "CONFLICT", [413] = "PAYLOAD_TOO_LARGE",
  [414] = "URI_TOO_LONG", [431] = "HEADERS_TOO_LARGE",
  [415] = "UNSUPPORTED_MEDIA_TYPE", [422] = "UNPROCESSABLE_ENTITY", [429] = "RATE_LIMIT_EXCEEDED",
  [499] = "CANCELLED", [500] = "INTERNAL_ERROR", [501] = "NOT_IMPLEMENTED", [502] = "BAD_GATEWAY",
  [503] = "SERVICE_UNAVAILABLE", [504] = "GATEWAY_TIMEOUT"}
-- Messages for bodies that carry none, and for every 5xx that is not a service's own google.rpc.Status
-- (Envoy's upstream texts name internals).
local MESSAGE = {[400] = "Invalid request", [401] = "Authentication required", [403] = "Permission denied",
  [404] = "Not found", [405] = "Method not allowed", [409] = "Conflict", [413] = "Request body too large",
  [414] = "Request URL too long", [431] = "Request headers too large",
  [422] = "Unprocessable request", [429] = "Rate limit exceeded", [500] = "Internal server error",
  [501] = "Not implemented", [502] = "Bad gateway", [503] = "Service temporarily unavailable",
  [504] = "Upstream request timed out"}
local OPENAI_TYPE = {[401] = "authentication_error", [403] = "permission_error", [429] = "rate_limit_error"}
local RESERVED = {error = true, message = true, details = true, request_id = true}
local CONTROL = {http_status = true, type = true, param = true}   -- ErrorInfo metadata that steers, never shown

local function is_type(d, name)
  local ty = d["@type"]
  return type(ty) == "string" and sub(ty, -#name - 1) == "/" .. name
end

-- The transcoder's JSON-to-proto messages name proto types ("for type TYPE_INT32",
-- "type.googleapis.com/llmlab..."), oneof internals and method paths. They become the field and the constraint
-- a client can act on; anything else naming internals becomes the status's plain message.
local EXPECT = {INT32 = "an integer between -2147483648 and 2147483647", SINT32 = "an integer",
  SFIXED32 = "an integer", INT64 = "an integer", SINT64 = "an integer", SFIXED64 = "an integer",
  UINT32 = "an integer between 0 and 4294967295", FIXED32 = "a non-negative integer",
  UINT64 = "a non-negative integer", FIXED64 = "a non-negative integer", DOUBLE = "a number", FLOAT = "a number",
  BOOL = "true or false", STRING = "a string", BYTES = "base64-encoded data", ENUM = "one of the documented values",
  Timestamp = "an RFC 3339 timestamp", Duration = 'a duration such as "1.5s"', Struct = "an object",
  ListValue = "an array", Value = "a JSON value", FieldMask = "a comma-separated list of fields",
  Int32Value = "an integer", Int64Value = "an integer", UInt32Value = "a non-negative integer",
  UInt64Value = "a non-negative integer", DoubleValue = "a number", FloatValue = "a number",
  BoolValue = "true or false", StringValue = "a string", BytesValue = "base64-encoded data"}
local INTERNAL_WORDS = {"TYPE_", "googleapis", "llmlab%.", "proto", "oneof", "resolve", "method", "descriptor"}

local function violation(e, field, constraint, value)
  local d = {field = field, value = value == nil and NULL or value, constraint = constraint}
  d[ORDER] = {"field", "value", "constraint"}
  e.message, e.details, e.param = "Validation failed", d, field
end

explain = function(e, text)
  local once = string.match(text, "oneof field '_?([%w_]+)' is already set")
  if once then return violation(e, once, "must be given once") end
  local field, rest = string.match(text, "^([%w_%.%[%]]*): (.*)$")
  if field then
    local value, ty = string.match(rest, "^invalid value (.*) for type (%S+)$")
    if ty then
      if find(value, "^Starting an? %a+ on a scalar field") or find(value, "^Starting an? %a+ on a repeated field") then
        -- here the "type" is the field's name: an object or array where a plain value belongs, or the reverse
        local target = ty
        if field ~= "" and string.match(field, "([%w_]+)$") ~= ty then target = field .. "." .. ty
        elseif field ~= "" then target = field end
        return violation(e, target, find(value, "repeated") and "must be an array" or "must be a plain value")
      end
      local name = string.match(ty, "^TYPE_(%u+%d*)$") or string.match(ty, "google%.protobuf%.(%w+)$")
      local shown = string.match(value, '^"(.*)"$') or value
      -- 64 bytes, backed off to a character boundary (a cut inside a UTF-8 sequence is not JSON text)
      if #shown > 64 then shown = string.gsub(sub(shown, 1, 64), "[\192-\255][\128-\191]*$", "") .. "..." end
      return violation(e, field ~= "" and field or "body", "must be " .. (EXPECT[name or ""] or "an object"), shown)
    end
    if rest == "Root element must be a message." then return violation(e, "body", "must be a JSON object") end
    if find(rest, "not repeating, cannot start list") then
      if field ~= "" then return violation(e, field, "must not be an array") end
      e.message = "A field of the request body holds an array where a single value belongs"
      return
    end
  end
  if find(text, "^Message too deep") then e.message = "The request body is nested too deeply"; return end
  if find(text, "^Could not resolve ") then e.message = "No endpoint for this method and path"; return end
  local lower = string.lower(text)
  for _, w in ipairs(INTERNAL_WORDS) do
    if find(lower, string.lower(w)) then return end   -- the status's own message is used instead
  end
  if #text <= 200 then
    -- the rest are the JSON parser's own words ("Unexpected end of string. Expected an object key or }.")
    e.message = find(text, "^Invalid request") and text or ("Malformed JSON: " .. text)
  end
end

-- Turns a google.rpc.Status JSON body, an ext_authz denial or an Envoy plain-text reply into
-- {message, reason, metadata, details, param, grpc_code}; nil fields were not given.
local function parse(raw)
  local e = {}
  if byte(raw, ws(raw, 1)) == 123 then
    local ok, st = pcall(decode, raw)
    if ok and type(st) == "table" and (st.message ~= nil or st.code ~= nil or st.details ~= nil) then
      if type(st.message) == "string" and st.message ~= "" then e.message = st.message end
      if type(st.code) == "number" then e.grpc_code = st.code end
      e.status_json = true
      local details = st.details
      if type(details) == "table" then
        for _, d in ipairs(details) do
          if type(d) == "table" then
            if is_type(d, "google.rpc.ErrorInfo") then
              if type(d.reason) == "string" and d.reason ~= "" then e.reason = d.reason end
              if type(d.metadata) == "table" then e.metadata = d.metadata end
            elseif is_type(d, "google.protobuf.Struct") then
              e.details = d.value
            elseif is_type(d, "google.rpc.BadRequest") then
              local fv = d.field_violations or d.fieldViolations
              if type(fv) == "table" and #fv > 0 then
                local fields = {}
                fields[ORDER] = {}
                for _, v in ipairs(fv) do
                  if type(v) == "table" and type(v.field) == "string" then
                    e.param = e.param or v.field
                    if fields[v.field] == nil then fields[ORDER][#fields[ORDER] + 1] = v.field end
                    fields[v.field] = type(v.description) == "string" and v.description or ""
                  end
                end
                e.fields = fields
              end
            end
          end
        end
      end
      return e
    end
    if ok then return e end                 -- some other JSON: no message worth showing
  end
  -- Envoy's plain-text replies: the first line ("id: invalid value ...", not the JSON parser's caret), reworded.
  local text = string.match(raw, "^%s*([^\n]-)%s*\n") or string.match(raw, "^%s*(.-)%s*$")
  if text ~= "" then explain(e, text) end
  return e
end

-- ErrorInfo metadata values are strings; integers become JSON numbers.
local function typed(v)
  if type(v) == "string" and #v < 16 and find(v, "^-?%d+$") then return tonumber(v) end
  return v
end

local function snake(code) return string.lower(code) end

local function respond(h, status, meta)
  local body = h:body(true)                 -- buffers this (error) body; header objects taken before are stale
  local hd = h:headers()
  local raw = body:length() > 0 and body:getBytes(0, body:length()) or ""
  local e = parse(raw)
  local md = e.metadata or {}

  if e.grpc_code == 12 and status == 404 then status = 501 end      -- Envoy maps UNIMPLEMENTED to 404
  local override = tonumber(md.http_status)
  if override and override >= 400 and override <= 599 then status = math.floor(override) end
  -- Envoy's own texts for 5xx name internals, its 413 text names the transcoder's buffer: use ours.
  if not e.status_json and (status >= 500 or status == 413 or status == 431) then e.message = nil end
  local message = e.message or MESSAGE[status] or (status >= 500 and "Server error" or "Request failed")
  local code = e.reason or CODE[status] or (status >= 500 and "INTERNAL_ERROR" or "BAD_REQUEST")

  -- Extra fields from ErrorInfo metadata (research: top level; lab/native: details when no Struct was given).
  local extras, extra_keys = {}, {}
  local mkeys = md[ORDER]
  if mkeys then
    for _, k in ipairs(mkeys) do
      if not CONTROL[k] then extra_keys[#extra_keys + 1] = k; extras[k] = typed(md[k]) end
    end
  end
  local retry_after = extras.retry_after
  if status == 429 then
    local reset = tonumber(hd:get("x-ratelimit-reset") or "")
    -- The auth service writes resets as epoch seconds (docs/auth.md); a small number is a delta.
    if reset and reset > 1000000000 then reset = math.max(1, reset - os.time()) end
    if retry_after == nil and reset then retry_after = reset end
    if retry_after ~= nil then hd:replace("retry-after", tostring(retry_after)) end
  end

  local details = e.details
  if details == nil and e.fields then
    details = {fields = e.fields}
    details[ORDER] = {"fields"}
  end
  -- The research family names every offending field under details.fields (docs/api.md "research"), whichever
  -- rule found it: a service's field violations, or the transcoder's one {field, value, constraint}.
  if meta.family == "research" and status == 400 then
    if e.fields then
      details = {fields = e.fields}
      details[ORDER] = {"fields"}
    elseif type(details) == "table" and type(details.field) == "string" and details.constraint ~= nil then
      local fields = {[details.field] = tostring(details.constraint)}
      fields[ORDER] = {details.field}
      details = {fields = fields}
      details[ORDER] = {"fields"}
    end
  end

  local rid = q(meta.request_id or "")
  local fam, out = meta.family
  if fam == "serving" then
    local param = md.param or e.param
    out = '{"error":{"message":' .. q(message)
      .. ',"type":' .. q(md.type or OPENAI_TYPE[status] or (status >= 500 and "api_error")
                         or "invalid_request_error")
      .. ',"param":' .. (param ~= nil and encode(param) or "null")
      .. ',"code":' .. (e.reason and q(string.lower(e.reason)) or "null")
      .. '},"request_id":' .. rid .. '}'
  elseif fam == "lab" or fam == "native" then
    if details == nil and #extra_keys > 0 then
      details = extras
      details[ORDER] = extra_keys
    end
    local d = details ~= nil and encode(details) or "null"
    if fam == "native" then
      out = '{"error":{"code":' .. q(code) .. ',"message":' .. q(message) .. ',"details":' .. d
        .. '},"request_id":' .. rid .. '}'
    else
      out = '{"success":false,"error":{"message":' .. q(message) .. ',"statusCode":' .. status
        .. ',"code":' .. q(code) .. ',"details":' .. d .. '},"meta":{"timestamp":'
        .. q(os.date("!%Y-%m-%dT%H:%M:%SZ")) .. ',"request_id":' .. rid .. '}}'
    end
  else                                                              -- research and ops
    local parts = {'"error":' .. q(snake(code)), '"message":' .. q(message)}
    if details ~= nil then parts[#parts + 1] = '"details":' .. encode(details) end
    for _, k in ipairs(extra_keys) do
      if not RESERVED[k] then parts[#parts + 1] = q(k) .. ":" .. encode(extras[k]) end
    end
    if status == 429 and retry_after ~= nil and extras.retry_after == nil then
      parts[#parts + 1] = '"retry_after":' .. encode(retry_after)
      local limit = tonumber(string.match(hd:get("x-ratelimit-limit") or "", "^%s*(%d+)") or "")
      local remaining = tonumber(hd:get("x-ratelimit-remaining") or "")
      if limit and extras.limit == nil then parts[#parts + 1] = '"limit":' .. limit end
      if remaining and extras.remaining == nil then parts[#parts + 1] = '"remaining":' .. remaining end
      if type(retry_after) == "number" and extras.reset_at == nil then
        parts[#parts + 1] = '"reset_at":' .. q(os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + retry_after))
      end
    end
    parts[#parts + 1] = '"request_id":' .. rid
    out = "{" .. concat(parts, ",") .. "}"
  end

  body:setBytes(out)
  hd:replace(":status", tostring(status))
  hd:replace("content-type", "application/json")
  hd:replace("content-length", tostring(#out))
  hd:remove("grpc-status")
  hd:remove("grpc-message")
  hd:remove("grpc-status-details-bin")
  if meta.request_id then hd:replace("x-request-id", meta.request_id) end
end

---------------------------------------------------------------- filter callbacks
local function family_of(path)
  if find(path, "^/api/v1[/?]") or path == "/api/v1" then return "native" end
  if find(path, "^/api[/?]") or path == "/api" then return "lab" end
  if find(path, "^/v1[/?]") or path == "/v1" then return "serving" end
  if find(path, "^/health") or find(path, "^/metrics[/?]") or path == "/metrics" then return "ops" end
  return "research"
end

-- The size of all request headers (Envoy's Lua has no byteSize(): one pass over them), dropping on the way
-- headers whose names gRPC refuses as metadata keys (only 0-9 a-z - _ . are allowed; HTTP also allows
-- !#$%&'*+^`|~): forwarded, they failed the call with "Illegal header key" (500).
local function header_bytes(hd)
  local n, illegal = 0, nil
  for k, v in pairs(hd) do
    n = n + #k + #v
    if byte(k, 1) ~= 58 and find(k, "[^0-9a-z_.%-]") then   -- 58 is ':' (pseudo-headers)
      illegal = illegal or {}
      illegal[#illegal + 1] = k
    end
  end
  if illegal then for _, k in ipairs(illegal) do hd:remove(k) end end
  return n
end

-- Client-sent x-llmlab-* headers are already gone: the listener's early header mutation drops them (render.py).
function envoy_on_request(h)
  local hd = h:headers()
  local md = h:streamInfo():dynamicMetadata()
  local path = hd:get(":path") or "/"
  md:set(NS, "family", family_of(path))     -- the original path, before transcoding rewrites it
  md:set(NS, "request_id", hd:get("x-request-id") or "")
  if header_bytes(hd) > MAX_HEADER_BYTES then
    h:respond({[":status"] = "431", ["content-type"] = "application/json"},
      '{"code":3,"message":"Request headers too large (the limit is ' .. MAX_HEADER_BYTES .. ' bytes in all)",'
      .. '"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"HEADERS_TOO_LARGE"}]}')
  elseif #path > MAX_URL_BYTES then
    -- A google.rpc.Status body like a service's: envoy_on_response words it for the family.
    h:respond({[":status"] = "414", ["content-type"] = "application/json"},
      '{"code":3,"message":"Request URL too long (' .. #path .. ' bytes; the limit is ' .. MAX_URL_BYTES
      .. ')","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"URI_TOO_LONG"}]}')
  end
end

math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local function new_request_id()             -- a UUIDv4-shaped id for replies Envoy sent before it made one
  return (string.gsub("xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx", "[xy]", function(c)
    return fmt("%x", c == "x" and math.random(0, 15) or math.random(8, 11))
  end))
end

function envoy_on_response(h)
  local hd = h:headers()
  local status = tonumber(hd:get(":status")) or 0
  -- A service answering 201 Created sends it as initial metadata (docs/api.md "research"); gRPC has no such code.
  local created = hd:get("x-llmlab-http-status")
  if created then
    hd:remove("x-llmlab-http-status")
    if status == 200 and (created == "201" or created == "202") then
      hd:replace(":status", created)
      status = tonumber(created)
    end
  end
  if status < 400 then                      -- successes (SSE included) pass without body access
    local ct = hd:get("content-type")
    if not (ct and find(ct, "^application/grpc")) then   -- gRPC clients need these; REST clients never do
      hd:remove("grpc-status")
      hd:remove("grpc-message")
      hd:remove("grpc-accept-encoding")
    end
    return
  end
  local meta = h:streamInfo():dynamicMetadata():get(NS) or {}
  if not meta.family then                   -- an early local reply: the request phase never ran
    meta = {family = hd:get("x-llmlab-family") or "research"}
  end
  hd:remove("x-llmlab-family")
  if not meta.request_id or meta.request_id == "" then
    meta.request_id = hd:get("x-request-id") or new_request_id()
  end
  respond(h, status, meta)
end
