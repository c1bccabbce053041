-- PATCH /Users/{id} with a PatchOp replacing displayName (patch-user.json).
local f = assert(io.open(os.getenv("BENCH_LUA_DIR") .. "/patch-user.json", "rb"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
wrk.method = "PATCH"
wrk.body = body
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/scim+json"
wrk.headers["Accept"] = "application/scim+json"
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
