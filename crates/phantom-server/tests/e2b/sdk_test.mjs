// E2B's unchanged JavaScript SDKs (npm `e2b`, `@e2b/code-interpreter`) against
// `phantom-supervisor --e2b-bind`. Run by sdk_test.py (which starts the supervisor and
// sets E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY) with NODE_PATH at the installed SDKs.
// Prints one line per check; exits 1 if any failed.
import { createRequire } from 'node:module'
const require = createRequire(process.env.NODE_PATH + '/')
const { Sandbox } = require('@e2b/code-interpreter')
const { CommandExitError } = require('e2b')

let failed = 0
const check = (what, ok, detail) => {
  console.log((ok ? 'ok   ' : 'FAIL ') + 'js: ' + what + (ok ? '' : `: ${JSON.stringify(detail)}`))
  if (!ok) failed = 1
}

const sb = await Sandbox.create({ metadata: { sdk: 'js' }, envs: { GREETING: 'hi' } })
check('Sandbox.create', /^i[a-z0-9]{19}$/.test(sb.sandboxId), sb.sandboxId)
const streamed = []
const r = await sb.commands.run('echo $GREETING; pwd', { onStdout: (d) => streamed.push(d) })
check('commands.run with onStdout', r.stdout === 'hi\n/home/user\n' && streamed.join('') === r.stdout, [r.stdout, streamed])
try {
  await sb.commands.run('exit 4')
  check('a non-zero exit throws CommandExitError', false, 'no error')
} catch (e) {
  check('a non-zero exit throws CommandExitError', e instanceof CommandExitError && e.exitCode === 4, String(e))
}
await sb.files.write('/home/user/a.txt', 'from js')
check('files.write + read', (await sb.files.read('a.txt')) === 'from js')
check('files.list', (await sb.files.list('/home/user')).some((e) => e.name === 'a.txt'))
const bg = await sb.commands.run('sleep 60', { background: true })
check('a background command is listed', (await sb.commands.list()).some((p) => p.pid === bg.pid))
await bg.kill()
check('and killed', !(await sb.commands.list()).some((p) => p.pid === bg.pid))
await sb.runCode('x = 1')
const e = await sb.runCode('x + 1')
check('runCode keeps state: x + 1 gives 2', e.text === '2', e.text)
const err = await sb.runCode('1/0')
check('runCode error', err.error && err.error.name === 'ZeroDivisionError', err.error)
check('getInfo metadata', (await sb.getInfo()).metadata.sdk === 'js')
const listed = await Sandbox.list().nextItems()
check('Sandbox.list', listed.some((s) => s.sandboxId === sb.sandboxId))
await sb.kill()
check('kill', !(await Sandbox.list().nextItems()).some((s) => s.sandboxId === sb.sandboxId))
process.exit(failed)
