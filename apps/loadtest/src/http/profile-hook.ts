// Loaded into an api under profile (`node --import …/profile-hook.js`, see ./profile.ts): starts
// V8's CPU profiler when the parent sends 'start' over the IPC channel and sends the profile back
// on 'stop', so that the profile covers the measured load only, not start-up and warm-up.
import { Session } from 'node:inspector/promises';

const session = new Session();
session.connect();

process.on('message', (message: unknown) => {
  void (async () => {
    if (message === 'start') {
      await session.post('Profiler.enable');
      await session.post('Profiler.setSamplingInterval', { interval: 200 });
      await session.post('Profiler.start');
      process.send?.({ started: true });
    } else if (message === 'stop') {
      const { profile } = await session.post('Profiler.stop');
      process.send?.({ profile });
    }
  })();
});
