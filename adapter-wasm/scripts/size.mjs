// The gzip -9 sizes of what a page loads, against the budgets:
//   first load of the client = client bundle + wasm-bindgen glue + .wasm   ≤ 40 KiB
//   <connection-status>                                                    ≤ 1.5 KiB
//   logger                                                                 ≤ 1 KiB
// Prints a table; exits 1 when anything is over budget. Run after `npm run build`.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const dist = join(dirname(fileURLToPath(import.meta.url)), '../dist');
const KiB = 1024;

const gzipped = (file) => gzipSync(readFileSync(join(dist, file)), { level: 9 }).length;

const budgets = [
  { name: 'client (first load)', files: ['index.js', 'switchboard_wasm.js', 'switchboard_wasm_bg.wasm'], budget: 40 * KiB },
  { name: '<connection-status>', files: ['status.js'], budget: 1.5 * KiB },
  { name: 'logger', files: ['debug.js'], budget: 1 * KiB },
];

const rows = [];
let over = false;
for (const { name, files, budget } of budgets) {
  const parts = files.map((file) => ({ file, raw: readFileSync(join(dist, file)).length, gzip: gzipped(file) }));
  const total = parts.reduce((sum, part) => sum + part.gzip, 0);
  const ok = total <= budget;
  over ||= !ok;
  for (const part of parts) rows.push([`  ${part.file}`, part.raw, part.gzip, '', '']);
  rows.push([name, '', total, budget, ok ? 'ok' : 'OVER']);
}

const header = ['entry', 'bytes', 'gzip -9', 'budget', ''];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
const line = (cells) => cells.map((c, i) => (i == 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
console.log(line(header));
for (const row of rows) console.log(line(row));
if (over) {
  console.error('over budget');
  process.exit(1);
}
