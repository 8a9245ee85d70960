import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The build goes into the Python package, which serves it at / (agentcast.dashboard).
export default defineConfig({
  plugins: [react()],
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
    proxy: {
      '/api': 'http://127.0.0.1:8000',
      '/ws': { target: 'ws://127.0.0.1:8000', ws: true },
    },
  },
});
