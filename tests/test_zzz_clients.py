def test_clients(redis_server):
    import redis
    info = redis.Redis(port=redis_server.port).info("clients")
    print("\nCLIENTS", info, redis.Redis(port=redis_server.port).config_get("maxclients"))
