// The d3-jetpack helpers circuit-tracer's attribution-graph viewer is written in, installed on
// d3 v7's own selection (window.d3, from the vendored d3.min.js).
//
// The viewer loads Anthropic's fork of d3-jetpack (transformer-circuits.pub, jetpack_2024-07-20.js),
// which is on no package registry. npm's d3-jetpack 2.3.0 has the same helpers, but its d3 v7
// bundle attaches them to a second, private copy of d3-selection, and it lacks two things of the
// fork: `c.drawAxis(svg)` on the object d3.conventions returns, and a `nestBy` for d3 v7.
// So this file gives exactly what the viewer calls (tests/test_explorer_browser.py checks every
// d3.* name and jetpack method in the installed viewer's sources against the loaded page):
// append/appendMany/selectAppend with 'tag.class#id' names, at, st, translate, parent;
// d3.conventions (with layers and drawAxis), d3.nestBy, d3.attachTooltip, d3.clamp.
//
// at, st, translate, parent, selectAppend, the name parser and conventions follow d3-jetpack 2.3.0
// (src/*.js), Copyright 2019 Gregor Aisch, BSD 3-Clause ("Redistribution and use in source and
// binary forms, with or without modification, are permitted provided that ... the above copyright
// notice, this list of conditions and the following disclaimer" are retained; the full text is in
// static/explorer/LICENSE.d3-jetpack).
(function (d3) {
  'use strict'
  var proto = d3.selection.prototype
  var d3Append = proto.append

  // 'text.node.big#n1' -> {tag: 'text', attr: {class: 'node big', id: 'n1'}}
  function parseName(name) {
    var attr = {}
    var parts = name.split(/([.#])/g)
    var tag = parts.shift()
    var p
    while ((p = parts.shift())) {
      if (p == '.') attr['class'] = attr['class'] ? attr['class'] + ' ' + parts.shift() : parts.shift()
      else if (p == '#') attr.id = parts.shift()
    }
    return {tag: tag, attr: attr}
  }

  proto.append = function (name) {
    if (typeof name !== 'string') return d3Append.call(this, name)
    var n = parseName(name)
    var sel = d3Append.call(this, n.tag)
    for (var key in n.attr) sel.attr(key, n.attr[key])
    return sel
  }

  proto.appendMany = function (name, data) {
    return this.selectAll(null).data(data).enter().append(name)
  }

  proto.selectAppend = function (name) {
    var n = parseName(name)
    var create = d3.creator(n.tag)
    var select = d3.selector(name)
    var sel = this.select(function () {
      return select.apply(this, arguments) || this.appendChild(create.apply(this, arguments))
    })
    for (var key in n.attr) sel.attr(key, n.attr[key])
    return sel
  }

  // SVG attributes whose names are camelCase; every other camelCase key becomes kebab-case.
  var camelCaseAttrs = /^(allowReorder|attributeName|attributeType|autoReverse|baseFrequency|baseProfile|calcMode|clipPathUnits|contentScriptType|contentStyleType|diffuseConstant|edgeMode|externalResourcesRequired|filterRes|filterUnits|glyphRef|gradientTransform|gradientUnits|kernelMatrix|kernelUnitLength|keyPoints|keySplines|keyTimes|lengthAdjust|limitingConeAngle|markerHeight|markerUnits|markerWidth|maskContentUnits|maskUnits|numOctaves|pathLength|patternContentUnits|patternTransform|patternUnits|pointsAtX|pointsAtY|pointsAtZ|preserveAlpha|preserveAspectRatio|primitiveUnits|referrerPolicy|refX|refY|repeatCount|repeatDur|requiredExtensions|requiredFeatures|specularConstant|specularExponent|spreadMethod|startOffset|stdDeviation|stitchTiles|surfaceScale|systemLanguage|tableValues|targetX|targetY|textLength|viewBox|viewTarget|xChannelSelector|yChannelSelector|zoomAndPan)$/
  function kebab(key) { return key.replace(/([a-z\d])([A-Z])/g, '$1-$2').toLowerCase() }

  proto.at = function (name, value) {
    if (typeof name == 'object') {
      for (var key in name) this.attr(camelCaseAttrs.test(key) ? key : kebab(key), name[key])
      return this
    }
    return arguments.length == 1 ? this.attr(name) : this.attr(name, value)
  }

  // Numbers given to these properties are pixels (jetpack's list).
  var pxStyles = new Set(('top left bottom right padding-top padding-left padding-bottom ' +
    'padding-right border-top border-left-width border-bottom-width border-right-width ' +
    'margin-top margin-left margin-bottom margin-right font-size width stroke-width line-height ' +
    'margin padding border border-radius max-width min-width max-height min-height height').split(' '))
  function addPx(value) { return value == null || value.match ? value : value + 'px' }

  function addStyle(sel, style, value) {
    style = kebab(style)
    if (!pxStyles.has(style)) return sel.style(style, value)
    return sel.style(style, typeof value == 'function'
      ? function () { return addPx(value.apply(this, arguments)) }
      : addPx(value))
  }

  proto.st = function (name, value) {
    if (typeof name == 'object') {
      for (var key in name) addStyle(this, key, name[key])
      return this
    }
    return arguments.length == 1 ? this.style(name) : addStyle(this, name, value)
  }

  // translate([x, y]) or translate(fn); translate(x, 0) / translate(y, 1) for one axis. SVG nodes
  // get a transform attribute, HTML nodes a CSS transform.
  proto.translate = function (xy, dim) {
    var node = this.node()
    if (!node) return this
    function at(d, i) {
      var p = typeof xy == 'function' ? xy.call(this, d, i) : xy
      if (dim === 0) p = [p, 0]
      else if (dim === 1) p = [0, p]
      return p
    }
    if (node.getBBox) {
      return this.attr('transform', function (d, i) {
        var p = at.call(this, d, i)
        return 'translate(' + p[0] + ',' + p[1] + ')'
      })
    }
    return this.style('transform', function (d, i) {
      var p = at.call(this, d, i)
      return 'translate(' + p[0] + 'px,' + p[1] + 'px)'
    })
  }

  // The distinct parents of the selected nodes.
  proto.parent = function () {
    var parents = []
    return this.filter(function () {
      if (parents.indexOf(this.parentNode) > -1) return false
      parents.push(this.parentNode)
      return true
    }).select(function () { return this.parentNode })
  }

  d3.clamp = function (min, d, max) { return Math.max(min, Math.min(max, d)) }

  // Groups in first-appearance order, each an array of its items with a string `.key`
  // (d3-collection's nest().entries, which jetpack's nestBy used, stringifies keys).
  d3.nestBy = function (array, key) {
    return d3.groups(array, key).map(function (group) {
      var values = group[1]
      values.key = String(group[0])
      return values
    })
  }

  // Show fieldFns(d) in tooltipSel on hover (d3 v7 listeners: (event, d)).
  d3.attachTooltip = function (sel, tooltipSel, fieldFns) {
    if (!sel.size()) return
    tooltipSel = tooltipSel || d3.select('.tooltip')
    var datum = sel.datum()
    fieldFns = fieldFns || Object.keys(datum || {})
      .filter(function (k) { return typeof datum[k] != 'object' })
      .map(function (k) { return function (d) { return k + ': <b>' + d[k] + '</b>' } })
    sel
      .on('mouseover.attachTooltip', function (event, d) {
        tooltipSel.classed('tooltip-hidden', false).html('')
          .appendMany('div', fieldFns).html(function (fn) { return fn(d) })
        d3.select(this).classed('tooltipped', true)
      })
      .on('mousemove.attachTooltip', function (event) {
        if (!tooltipSel.size()) return
        var bb = tooltipSel.node().getBoundingClientRect()
        var left = d3.clamp(20, event.clientX - bb.width / 2, window.innerWidth - bb.width - 20)
        var top = innerHeight > event.clientY + 20 + bb.height
          ? event.clientY + 20 : event.clientY - bb.height - 20
        tooltipSel.style('left', left + 'px').style('top', top + 'px')
      })
      .on('mouseout.attachTooltip', function () {
        tooltipSel.classed('tooltip-hidden', true)
        d3.selectAll('.tooltipped').classed('tooltipped', false)
      })
  }

  // Margins, size, scales, axes and stacked layers ('s' svg > g, 'c' canvas 2d context, 'd' div)
  // in c.sel; c.drawAxis(svg) draws the x and y axes into svg (default c.svg).
  d3.conventions = function (c) {
    c = c || {}
    c.margin = c.margin || {}
    ;['top', 'right', 'bottom', 'left'].forEach(function (d) {
      if (!c.margin[d] && c.margin[d] !== 0) c.margin[d] = 20
    })
    if (c.parentSel) c.sel = c.parentSel
    var node = c.sel && c.sel.node()
    c.totalWidth = c.totalWidth || (node && node.offsetWidth) || 960
    c.totalHeight = c.totalHeight || (node && node.offsetHeight) || 500
    c.width = c.width || c.totalWidth - c.margin.left - c.margin.right
    c.height = c.height || c.totalHeight - c.margin.top - c.margin.bottom
    c.totalWidth = c.width + c.margin.left + c.margin.right
    c.totalHeight = c.height + c.margin.top + c.margin.bottom
    c.sel = c.sel || d3.select('body')
    c.sel.st({position: 'relative', height: c.totalHeight, width: c.totalWidth})
    c.x = c.x || d3.scaleLinear().range([0, c.width])
    c.y = c.y || d3.scaleLinear().range([c.height, 0])
    c.xAxis = c.xAxis || d3.axisBottom().scale(c.x)
    c.yAxis = c.yAxis || d3.axisLeft().scale(c.y)

    var stacked = !!c.layers
    c.layers = (c.layers || 's').split('').map(function (type) {
      var layer
      if (type == 's') {
        layer = c.sel.append('svg')
          .st({position: stacked ? 'absolute' : ''})
          .attr('width', c.totalWidth)
          .attr('height', c.totalHeight)
          .append('g')
          .attr('transform', 'translate(' + c.margin.left + ',' + c.margin.top + ')')
        if (!c.svg) c.svg = layer
      } else if (type == 'c') {
        var s = window.devicePixelRatio || 1
        layer = c.sel.append('canvas')
          .at({width: c.totalWidth * s, height: c.totalHeight * s})
          .st({width: c.totalWidth, height: c.totalHeight, position: 'absolute'})
          .node().getContext('2d')
        layer.scale(s, s)
        layer.translate(c.margin.left, c.margin.top)
      } else if (type == 'd') {
        layer = c.sel.append('div').st({
          position: 'absolute', left: c.margin.left, top: c.margin.top,
          width: c.width, height: c.height,
        })
      }
      return layer
    })

    c.drawAxis = function (svg) {
      svg = svg || c.svg
      var xAxisSel = svg.append('g').attr('class', 'x axis')
        .attr('transform', 'translate(0,' + c.height + ')').call(c.xAxis)
      var yAxisSel = svg.append('g').attr('class', 'y axis').call(c.yAxis)
      return {xAxisSel: xAxisSel, yAxisSel: yAxisSel}
    }
    return c
  }
})(window.d3)
