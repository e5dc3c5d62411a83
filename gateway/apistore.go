package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// apiServicesFile holds the services added through the API, in the state
// directory, so they survive restarts.
const apiServicesFile = "api-services.json"

// apiStore persists the bodies of the services added through the API. A
// body is kept as it was posted and validated again at every start, by the
// same code as the configuration file.
//
// A change is saved before it is applied, so that a service is never served
// that the next start would not have; a change that cannot be saved, or
// saved but not applied, leaves the store and its file as they were.
type apiStore struct {
	path   string
	bodies map[string]json.RawMessage // by service name
	saved  []byte                     // the file's content; nil while there is no file
	// write is catalog.WriteFileAtomic; tests inject faults.
	write func(path string, data []byte, perm os.FileMode) (replaced bool, err error)
}

type apiStoreFile struct {
	Version  int               `json:"version"`
	Services []json.RawMessage `json:"services"`
}

func newAPIStore(stateDir string) *apiStore {
	p := ""
	if stateDir != "" {
		p = filepath.Join(stateDir, apiServicesFile)
	}
	return &apiStore{path: p, bodies: make(map[string]json.RawMessage), write: catalog.WriteFileAtomic}
}

// load reads the stored services. One that no longer validates against the
// current configuration (say its tenant was removed), or names a service
// an earlier entry has (a hand-edited file), is an error naming it
// and the file: nothing is dropped silently.
func (s *apiStore) load(ctx conf.ServiceContext) ([]catalog.Service, error) {
	if s.path == "" {
		return nil, nil
	}
	// Litter of a save a crash interrupted (the state directory is the
	// process's own: the VIP pool holds its lock).
	catalog.RemoveTempFiles(s.path)
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		// Not a file that is not there: the state directory is no
		// directory (a path through a file), or this user may not read it.
		return nil, fmt.Errorf("API services %s: %w: state_dir %s must be a directory this user can read and write; fix it or set [gateway] state_dir to one",
			s.path, err, filepath.Dir(s.path))
	}
	s.saved = data
	var f apiStoreFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != 1 {
		return nil, fmt.Errorf("API services %s: not a version 1 file (%v); move it away to start without the services added through the API", s.path, err)
	}
	var (
		out   []catalog.Service
		errs  []error
		entry = make(map[string]int) // by name: the entry that has it
	)
	for i, body := range f.Services {
		svc, err := conf.ParseServiceJSON(body, ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("API services %s: entry %d: %w", s.path, i, err))
			continue
		}
		if j, dup := entry[svc.Name]; dup {
			errs = append(errs, fmt.Errorf("API services %s: entry %d: service %q is entry %d already", s.path, i, svc.Name, j))
			continue
		}
		entry[svc.Name] = i
		svc.Source = "api"
		s.bodies[svc.Name] = body
		out = append(out, svc)
	}
	if len(errs) > 0 {
		errs = append(errs, fmt.Errorf("fix or remove these entries of %s (or the configuration they conflict with) and start again", s.path))
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// check validates every stored body against ctx as load does at start, so
// that a reload the next start would refuse (say [limits] lowered below an
// API service's new_flows_per_second) is refused as well. Each error names
// the service and the key.
func (s *apiStore) check(ctx conf.ServiceContext) error {
	var errs conf.Errors
	for _, name := range slices.Sorted(maps.Keys(s.bodies)) {
		if _, err := conf.ParseServiceJSON(s.bodies[name], ctx); err != nil {
			for _, e := range confErrors(err) {
				errs = append(errs, fmt.Errorf("service %q added through the API: %w; delete it or add it again with a value that fits (DELETE, POST /v1/services), then reload", name, e))
			}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// with returns the store's bodies as they would be with name's body set to
// body, or removed when body is nil; save writes them. The caller saves
// before applying and restores on failure.
func (s *apiStore) with(name string, body json.RawMessage) map[string]json.RawMessage {
	m := maps.Clone(s.bodies)
	if body == nil {
		delete(m, name)
	} else {
		var buf bytes.Buffer
		if json.Compact(&buf, body) == nil {
			body = buf.Bytes()
		}
		m[name] = body
	}
	return m
}

// save writes bodies and makes them the store's. The file is replaced
// atomically and durably (catalog.WriteFileAtomic syncs the temporary file
// and the directory), so a crash leaves the old or the new file. undo makes
// the store and its file what they were before, for a change that was saved
// but could not be applied.
//
// On error the store is as it was, and so is the file: a write that failed
// before its rename left it alone, and one whose rename happened but may
// not survive a crash (the directory could not be synced) is undone by
// putting the previous content back. Only if that fails too does the file
// keep bodies; the error says so.
func (s *apiStore) save(bodies map[string]json.RawMessage) (undo func() error, err error) {
	prevBodies, prevSaved := s.bodies, s.saved
	undo = func() error {
		// Forgotten even if the file cannot be put back, so that the
		// next save writes the file without the change.
		s.bodies = prevBodies
		if err := s.putBack(prevSaved); err != nil {
			return fmt.Errorf("%w; %s keeps the change that was not applied until the next change through the API", err, s.path)
		}
		return nil
	}
	if s.path == "" {
		s.bodies = bodies
		return undo, nil
	}
	data, err := encodeAPIServices(bodies)
	if err != nil {
		return nil, err
	}
	replaced, err := s.put(data)
	if err != nil {
		if replaced {
			if uerr := s.putBack(prevSaved); uerr != nil {
				return nil, fmt.Errorf("%w; putting the previous %s back failed too, so it holds the change until the next save: %w", err, s.path, uerr)
			}
		}
		return nil, err
	}
	s.bodies = bodies
	return undo, nil
}

// put writes data as the file's content; s.saved follows the file.
func (s *apiStore) put(data []byte) (replaced bool, err error) {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		return false, fmt.Errorf("API services: %w", err)
	}
	replaced, err = s.write(s.path, data, 0o600)
	if replaced {
		s.saved = data
	}
	if err != nil {
		return replaced, fmt.Errorf("API services: %w", err)
	}
	return replaced, nil
}

// putBack makes prev the file's content again (nil, no file: a file without
// services, which loads the same). It succeeds once prev is back, even if
// that is no more durable than the write it undoes.
func (s *apiStore) putBack(prev []byte) error {
	if s.path == "" || (prev != nil && bytes.Equal(prev, s.saved)) {
		return nil
	}
	if prev == nil {
		var err error
		if prev, err = encodeAPIServices(nil); err != nil {
			return err
		}
	}
	if replaced, err := s.put(prev); !replaced {
		return err
	}
	return nil
}

// encodeAPIServices is the file's content for bodies, sorted by name.
func encodeAPIServices(bodies map[string]json.RawMessage) ([]byte, error) {
	names := slices.Sorted(maps.Keys(bodies))
	f := apiStoreFile{Version: 1, Services: make([]json.RawMessage, 0, len(names))}
	for _, n := range names {
		f.Services = append(f.Services, bodies[n])
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}
