"""Redis backend of the index (`index.RedisMihIndex`, opened by `client.open_redis_index`)."""
