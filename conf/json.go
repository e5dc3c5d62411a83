package conf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"

	"github.com/ztgate/ztgate/catalog"
)

// ParseServiceJSON parses and validates a service posted to the admin API:
// a JSON object with the keys of a [[service]] table ("port": [...],
// "health": {...}, "timeouts": {...}). Unknown keys are errors; null is the
// same as an absent key. On failure the error is an Errors value whose
// elements name their key paths (service.port[0].protocol: ...). The
// service is checked against ctx as ValidateServices checks a set of one;
// checks against the other services are the caller's, with ValidateServices.
func ParseServiceJSON(data []byte, ctx ServiceContext) (catalog.Service, error) {
	const path = "service"
	el := newErrList("")
	tree, err := decodeJSON(data)
	if err != nil {
		el.decodeErr(path, "%w", err)
		return catalog.Service{}, el.errs
	}
	var raw rawService
	d := treeDecoder{errs: el, table: "object"}
	d.decode(path, tree, reflect.ValueOf(&raw).Elem())
	if el.isBad(path) {
		return catalog.Service{}, el.errs
	}
	v := &validator{errList: el}
	svc := v.service(path, &raw, &ctx)
	svc.Source = "api"
	validateServices(el, []catalog.Service{svc}, ctx, servicePaths{service: func(int) string { return path }})
	if err := el.err(); err != nil {
		return catalog.Service{}, err
	}
	return svc, nil
}

// decodeJSON decodes one JSON value into a generic tree, numbers kept as
// json.Number so that integers are told from fractions.
func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("invalid JSON at byte %d: %w", se.Offset, err)
		}
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if tree == nil {
		return nil, fmt.Errorf("expected an object, got null")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("invalid JSON: data after the object")
	}
	return tree, nil
}
