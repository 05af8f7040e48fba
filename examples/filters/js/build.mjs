// Builds filter.js into a WASI component with componentize-js's library API (its
// `jco componentize` CLI failed on this machine; the library call works).
// Usage: node build.mjs [OUT.wasm]   (default: field-equals.wasm)
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? path.join(here, 'field-equals.wasm');
const { component } = await componentize({
  sourcePath: path.join(here, 'filter.js'),
  witPath: path.join(here, '..', '..', '..', 'wit'),
  worldName: 'filter-plugin',
  // A filter needs none of these; leaving them out keeps the sandbox and the component small.
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
console.log(`built ${out} (${component.length} bytes)`);
