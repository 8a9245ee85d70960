import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// @agentcast/client (a `file:` dependency on ../clients/js) is bundled from its TypeScript
// source, so the build needs no build of the client first (its package.json points at dist/).
const client = (path: string) => decodeURIComponent(new URL(`../clients/js/src/${path}`, import.meta.url).pathname);

// The build goes into the Python package, which serves it at / (agentcast.dashboard).
export default defineConfig({
  plugins: [react()],
  resolve: {
    alias: [
      { find: /^@agentcast\/client$/, replacement: client('index.ts') },
      { find: /^@agentcast\/client\/react$/, replacement: client('react.ts') },
    ],
    // the client's source sits beside its own node_modules (React 19 for its tests): one React
    dedupe: ['react', 'react-dom'],
  },
  base: './', // relative URLs: the page also works under a path prefix (a proxy's /agentcast/)
  build: {
    outDir: '../src/agentcast/dashboard/static',
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
    target: 'es2020',
    chunkSizeWarningLimit: 600,
  },
  server: {
    fs: { allow: ['.', '../clients/js/src'] },
    proxy: {
      '/api': 'http://127.0.0.1:8000',
      '/ws': { target: 'ws://127.0.0.1:8000', ws: true },
    },
  },
});
