#!/usr/bin/env node
/**
 * The installed `mpconvert` command (package.json "bin", /usr/bin/mpconvert): refuses a Node.js older than the
 * one mpconvert is built for with a message saying what to do, before loading anything that could fail in a
 * less readable way on it.
 */
export const NODE_MAJOR_MIN = 20;

const major = Number(process.versions.node.split('.')[0]);
if (!(major >= NODE_MAJOR_MIN)) {
  process.stderr.write(
    `mpconvert: Node.js ${process.versions.node} is too old; mpconvert needs Node.js ${NODE_MAJOR_MIN} or newer.\n` +
      `  Debian 12 ships Node.js 18: install Node.js 20 or newer from NodeSource (https://github.com/nodesource/distributions,\n` +
      `  package 'nodejs' from deb.nodesource.com/node_20.x), or use Debian 13, whose nodejs is 20.\n`,
  );
  process.exit(1);
}
await import('./main.js');
