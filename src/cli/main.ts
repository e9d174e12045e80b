#!/usr/bin/env node
/** The `mpconvert` command line: one program, one subcommand per role or tool. */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { concentratorCommand } from '../concentrator/cli.js';
import { doctorCommand } from '../control/doctor.js';
import { labCommand } from '../lab/cli.js';
import { cpeCommand } from '../cpe/cli.js';
import { demoCommand } from './demo.js';
import { statusCommand } from '../control/status.js';

const program = new Command('mpconvert')
  .description('Network-Assisted MPTCP conversion points (CPE and concentrator) over Linux kernel MPTCP')
  .version(packageVersion())
  .showHelpAfterError();
program.addCommand(doctorCommand());
program.addCommand(labCommand());
program.addCommand(concentratorCommand());
program.addCommand(cpeCommand());
program.addCommand(demoCommand());
program.addCommand(statusCommand());

await program.parseAsync(process.argv);

/** The version in package.json (dist/src/cli/../../../package.json: the repository's, or the installed package's). */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}
