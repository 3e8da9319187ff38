return {'ok', '1'}
