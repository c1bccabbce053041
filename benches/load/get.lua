-- GET /Users/{id} (the URL carries the path).
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Accept"] = "application/scim+json"
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
