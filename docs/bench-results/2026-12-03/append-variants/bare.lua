local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[6], seq .. '-0',
  'i', ARGV[3], 'f', ARGV[1], 't', ARGV[4], 'b', ARGV[5], 'c', ARGV[2])
return {'N:' .. seq, {}, '', '0'}
