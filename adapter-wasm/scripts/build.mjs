// Builds the browser client into dist/: the wasm core (cargo → wasm-opt → wasm-bindgen), the
// three entries (client, <connection-status>, logger) as minified ESM, their declarations
// (tsc), the demo page and the test page.
//
//   node scripts/build.mjs              everything
//   node scripts/build.mjs --skip-wasm  the TypeScript only (dist/ must hold a wasm build)
//
// Needs: cargo with the wasm32-unknown-unknown target, the wasm-bindgen CLI at the version
// pinned in adapter-wasm/Cargo.toml, and binaryen's wasm-opt.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const workspace = join(root, '..');
const dist = join(root, 'dist');
const skipWasm = process.argv.includes('--skip-wasm');

/** The feature flags wasm-opt 108 needs for what rustc emits today. */
const WASM_OPT_FEATURES = [
  '--enable-sign-ext',
  '--enable-bulk-memory',
  '--enable-nontrapping-float-to-int',
  '--enable-mutable-globals',
  '--enable-reference-types',
  '--enable-multivalue',
];

function run(command, args, cwd = root) {
  console.log(`$ ${command} ${args.join(' ')}`);
  execFileSync(command, args, { cwd, stdio: 'inherit' });
}

function buildWasm() {
  run(
    'cargo',
    ['build', '-p', 'switchboard-wasm', '--target', 'wasm32-unknown-unknown', '--profile', 'wasm'],
    workspace,
  );
  // wasm-opt runs before wasm-bindgen: Debian's binaryen 108 rewrites the export of the
  // externref table that wasm-bindgen adds to point at the function table (the page then
  // fails in `__wbindgen_init_externref_table`), and the size comes out the same.
  const bindgen = join(dist, '.wasm-bindgen');
  rmSync(bindgen, { recursive: true, force: true });
  mkdirSync(bindgen);
  const target = process.env.CARGO_TARGET_DIR ?? join(workspace, 'target');
  const wasm = join(target, 'wasm32-unknown-unknown/wasm/switchboard_wasm.wasm');
  const optimized = join(bindgen, 'optimized.wasm');
  // Beyond -Oz: to a fixed point, and told what holds for a Rust wasm (its memory starts
  // zeroed and nothing lives in the first KiB), about 2 % smaller gzipped.
  const shrink = ['-Oz', '--converge', '--low-memory-unused', '--zero-filled-memory'];
  run('wasm-opt', [...shrink, '--strip-debug', '--strip-producers', ...WASM_OPT_FEATURES, wasm, '-o', optimized]);
  run('wasm-bindgen', [
    '--target',
    'web',
    '--out-name',
    'switchboard_wasm',
    '--remove-name-section',
    '--remove-producers-section',
    '--out-dir',
    bindgen,
    optimized,
  ]);
  copyFileSync(join(bindgen, 'switchboard_wasm_bg.wasm'), join(dist, 'switchboard_wasm_bg.wasm'));
  // The glue stays its own module (the client imports it when it first connects), minified.
  esbuild.buildSync({
    entryPoints: [join(bindgen, 'switchboard_wasm.js')],
    outfile: join(dist, 'switchboard_wasm.js'),
    format: 'esm',
    minify: true,
    target: 'es2022',
    logLevel: 'warning',
  });
  rmSync(bindgen, { recursive: true, force: true });
}

/**
 * Keeps modules as runtime imports of their built files beside the importer: the glue
 * (`./switchboard_wasm.js`) for the entries, and the entries (`../ts/index.js` → `./index.js`)
 * for the pages, which import them as an application would.
 */
const external = (names) => ({
  name: 'external',
  setup(build) {
    const filter = new RegExp(`^(?:\\.\\.?/)+(?:ts/)?(${names.join('|')})\\.js$`);
    build.onResolve({ filter }, (args) => ({
      path: `./${filter.exec(args.path)[1]}.js`,
      external: true,
    }));
  },
});

async function buildTypeScript() {
  const common = { bundle: true, format: 'esm', minify: true, target: 'es2022', logLevel: 'warning' };
  await esbuild.build({
    ...common,
    entryPoints: { index: 'ts/index.ts', status: 'ts/status.ts', debug: 'ts/debug.ts' },
    outdir: dist,
    plugins: [external(['switchboard_wasm'])],
  });
  // Pages import the entries as a user would, from beside them.
  await esbuild.build({
    ...common,
    entryPoints: { demo: 'demo/demo.ts', 'test-page': 'test/page/page.ts' },
    outdir: dist,
    plugins: [external(['index', 'status', 'debug'])],
  });
  copyFileSync(join(root, 'demo/demo.html'), join(dist, 'demo.html'));
  for (const page of ['test.html', 'blank.html']) {
    copyFileSync(join(root, 'test/page', page), join(dist, page));
  }
  // Declarations of the public entries, from the sources (the glue's are hand-written).
  run(join(root, 'node_modules/.bin/tsc'), [
    '-p',
    'tsconfig.json',
    '--noEmit',
    'false',
    '--emitDeclarationOnly',
    '--outDir',
    join(dist, 'types'),
  ]);
  copyFileSync(join(root, 'ts/switchboard_wasm.d.ts'), join(dist, 'types/ts/switchboard_wasm.d.ts'));
  for (const entry of ['index', 'status', 'debug']) {
    writeFileSync(join(dist, `${entry}.d.ts`), `export * from './types/ts/${entry}.js';\n`);
  }
}

mkdirSync(dist, { recursive: true });
if (!skipWasm) buildWasm();
else readFileSync(join(dist, 'switchboard_wasm_bg.wasm')); // fails clearly when there is none
await buildTypeScript();
console.log('built dist/');
