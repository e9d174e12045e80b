#!/usr/bin/env node
/** The `mpconvert` command line: one program, one subcommand per role or tool. */
import { Command } from 'commander';
import { concentratorCommand } from '../concentrator/cli.js';
import { doctorCommand } from '../control/doctor.js';
import { labCommand } from '../lab/cli.js';
import { cpeCommand } from '../cpe/cli.js';
import { demoCommand } from './demo.js';
import { statusCommand } from '../control/status.js';

const program = new Command('mpconvert')
  .description('Network-Assisted MPTCP conversion points (CPE and concentrator) over Linux kernel MPTCP')
  .version('0.1.0')
  .showHelpAfterError();
program.addCommand(doctorCommand());
program.addCommand(labCommand());
program.addCommand(concentratorCommand());
program.addCommand(cpeCommand());
program.addCommand(demoCommand());
program.addCommand(statusCommand());

await program.parseAsync(process.argv);
