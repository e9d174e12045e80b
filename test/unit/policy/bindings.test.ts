/**
 * The binding gate (src/policy/bindings.ts), pure: the port range, the concentrator's own services (on the
 * binding's address or on every address), one owner per binding key, the per-CPE limit; the key does not
 * depend on the order of the addresses.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bindingGate, bindingKey, type BindingState } from '../../../src/policy/bindings.js';

const rules = { ports: { from: 1024, to: 9999 }, maxPerCpe: 2, own: [{ host: '198.19.0.1', port: 5000 }, { host: '0.0.0.0', port: 9090 }, { host: '127.0.0.1', port: 9091 }] };
const state = (owners: Record<string, string> = {}): BindingState => ({
  owner: (k) => owners[k],
  count: (cpe) => Object.values(owners).filter((o) => o === cpe).length,
});
const claim = (port: number, cpe = 'key:a', addresses = ['198.19.0.1']) => ({ cpe, addresses, port });
const code = (r: ReturnType<typeof bindingGate>) => r?.code;

test('port range and the concentrator\'s own services (reverse destination gate)', () => {
  assert.equal(code(bindingGate(claim(8080), state(), rules)), undefined);
  assert.equal(code(bindingGate(claim(1023), state(), rules)), 'binding-port');
  assert.equal(code(bindingGate(claim(10000), state(), rules)), 'binding-port');
  assert.equal(code(bindingGate(claim(5000), state(), rules)), 'binding-port', 'the MPTCP listener on that address');
  assert.equal(code(bindingGate(claim(9090), state(), rules)), 'binding-port', 'a service on every address');
  assert.equal(code(bindingGate(claim(9091), state(), rules)), undefined, 'a service on another address only');
  assert.equal(code(bindingGate(claim(5000, 'key:a', ['198.19.0.128']), state(), rules)), undefined, 'the listener port on a pool address');
});

test('one owner per binding; the owner may add reverse connections; a limit per CPE', () => {
  const taken = state({ [bindingKey(['198.19.0.1'], 8080)]: 'key:a', [bindingKey(['198.19.0.1'], 8081)]: 'key:a' });
  assert.equal(code(bindingGate(claim(8080, 'key:b'), taken, rules)), 'binding-taken');
  assert.equal(code(bindingGate(claim(8080, 'key:a'), taken, rules)), undefined, 'its own binding, over the limit or not');
  assert.equal(code(bindingGate(claim(8082, 'key:a'), taken, rules)), 'binding-limit');
  assert.equal(code(bindingGate(claim(8082, 'key:b'), taken, rules)), undefined);
  assert.equal(code(bindingGate(claim(8080, 'key:b', ['198.19.0.2']), taken, rules)), undefined, 'the same port on another address is another binding');
  assert.equal(bindingKey(['2001:db8::1', '198.19.0.1'], 80), bindingKey(['198.19.0.1', '2001:db8::1'], 80));
});
