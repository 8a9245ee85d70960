import { useState } from 'react';

export function SignIn({ onSubmit, error }: { onSubmit(token: string): void; error: string | null }) {
  const [value, setValue] = useState('');
  return (
    <div className="signin-wrap">
      <form
        className="card signin"
        data-testid="signin"
        onSubmit={(e) => {
          e.preventDefault();
          if (value.trim()) onSubmit(value.trim());
        }}
      >
        <h1>Sign in</h1>
        <p className="muted">
          This server requires a token. Paste the JWT you were given (for example from{' '}
          <code>agentcast token --sub you</code>). It is kept in this tab only.
        </p>
        <label htmlFor="token">Access token</label>
        <textarea
          id="token"
          name="token"
          rows={4}
          spellCheck={false}
          placeholder="eyJhbGciOi…"
          value={value}
          onChange={(e) => setValue(e.target.value)}
        />
        {error ? <p className="form-error">{error}</p> : null}
        <button className="btn primary" type="submit" disabled={!value.trim()}>
          Continue
        </button>
      </form>
    </div>
  );
}
