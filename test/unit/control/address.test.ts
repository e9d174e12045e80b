import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseEndpoint, formatEndpoint } from '../../../src/control/address.js';

test('endpoints parse for both families and reject junk', () => {
  assert.deepEqual(parseEndpoint('198.18.200.1:5000'), { host: '198.18.200.1', port: 5000, family: 4 });
  assert.deepEqual(parseEndpoint('[2001:db8::1]:443'), { host: '2001:db8::1', port: 443, family: 6 });
  for (const bad of ['198.18.200.1', '2001:db8::1:80', 'host:80', '[1.2.3.4]:80', '1.2.3.4:0', '1.2.3.4:65536', '']) {
    assert.throws(() => parseEndpoint(bad), /Cannot parse endpoint/, bad);
  }
  assert.equal(formatEndpoint('2001:db8::1', 80), '[2001:db8::1]:80');
  assert.equal(formatEndpoint('198.18.0.1', 80), '198.18.0.1:80');
});
