// An independent Node.js client (@grpc/grpc-js with @grpc/proto-loader reading the .proto files
// directly, no generated code) against a real peerpath-consent binary and the real PostgreSQL.
// Run by ctest; needs PEERPATH_TEST_PG_ADMIN_URL (set by tools/test), a token minted by
// peerpathctl and the public key file it was signed for.
'use strict';

const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const root = path.resolve(__dirname, '../..');
const build = process.env.PEERPATH_BUILD_DIR;
const adminUrl = process.env.PEERPATH_TEST_PG_ADMIN_URL;

function psql(database, sql) {
  const url = adminUrl.replace(/\/[^/]*$/, '/' + database);
  execFileSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', url, '-c', sql]);
}

function ops(address) {
  const definition = protoLoader.loadSync('peerpath/ops/v1/operations.proto', {
    includeDirs: [path.join(root, 'proto')], longs: String, enums: String, defaults: true,
  });
  const { OperationsService } = grpc.loadPackageDefinition(definition).peerpath.ops.v1;
  return new OperationsService(address, grpc.credentials.createInsecure());
}

test('a Node client lists migrations with a token and is refused without one', async () => {
  assert.ok(adminUrl, 'PEERPATH_TEST_PG_ADMIN_URL is not set: run through tools/test');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peerpath-node-'));
  execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256',
                           '-out', path.join(tmp, 'key.pem')]);
  execFileSync('openssl', ['pkey', '-in', path.join(tmp, 'key.pem'), '-pubout',
                           '-out', path.join(tmp, 'pub.pem')]);
  const token = execFileSync(path.join(build, 'tools/peerpathctl/peerpathctl'), [
    'token', '--key=' + path.join(tmp, 'key.pem'), '--issuer=node-test-idp', '--agency=agency-n',
    '--role=operations', '--sub=node-ops']).toString().trim();

  const database = 'pp_node_' + Math.random().toString(16).slice(2, 14);
  psql('postgres', `CREATE DATABASE ${database}`);
  psql(database, `GRANT CONNECT, CREATE ON DATABASE ${database} TO peerpath_consent_owner`);
  psql(database, `GRANT CONNECT ON DATABASE ${database} TO peerpath_consent`);
  const base = adminUrl.replace(/\/[^/]*$/, '/' + database);
  const serviceUrl = base.replace(/\/\/postgres@/, '//peerpath_consent@');
  const ownerUrl = base.replace(/\/\/postgres@/, '//peerpath_consent_owner@');
  const env = Object.fromEntries(Object.entries(process.env)
                                     .filter(([k]) => !k.startsWith('PEERPATH_')));
  const child = spawn(path.join(build, 'services/consent/peerpath-consent'), [
    'serve', '--listen_address=127.0.0.1:0', '--metrics_address=127.0.0.1:0',
    '--database_url=' + serviceUrl, '--migration_database_url=' + ownerUrl,
    '--jwt_keys_file=' + path.join(tmp, 'pub.pem'),
    '--jwt_issuer=node-test-idp'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no listening line:\n' + log)), 20000);
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const match = log.match(/"grpc_port":(\d+)/);
      if (match) { clearTimeout(timer); resolve(Number(match[1])); }
    });
  });
  const client = ops('127.0.0.1:' + port);
  const call = (metadata) => new Promise((resolve) => {
    client.ListMigrations({ page_size: 0 }, metadata, { deadline: Date.now() + 5000 },
                          (error, response) => resolve({ error, response }));
  });
  try {
    let answer;
    const withToken = new grpc.Metadata();
    withToken.set('authorization', 'Bearer ' + token);
    for (let i = 0; i < 100; i++) {  // Until migrations are applied and the call succeeds.
      answer = await call(withToken);
      if (!answer.error) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(answer.error, null, String(answer.error));
    assert.ok(answer.response.migrations.length >= 1);
    assert.match(answer.response.migrations[0].checksum, /^[0-9a-f]{64}$/);

    const anonymous = await call(new grpc.Metadata());
    assert.equal(anonymous.error.code, grpc.status.UNAUTHENTICATED);
    assert.match(anonymous.error.details, /missing authorization/);
  } finally {
    client.close();
    child.kill('SIGTERM');
    const code = await new Promise((resolve) => child.on('exit', resolve));
    psql('postgres', `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    fs.rmSync(tmp, { recursive: true, force: true });
    assert.equal(code, 0, 'service did not exit 0 after SIGTERM:\n' + log);
  }
});
